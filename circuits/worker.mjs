#!/usr/bin/env node
// Long-lived prover worker for one circuit and one key set: loads ZoKrates' program (for
// witnesses), the verification key and, when present, the snarkjs proving key once, then
// answers JSON-line requests on stdin, one at a time, on stdout:
//   {"id", "method": "witness", "args": {"args": [...], "wtns_path"}}  -> {"inputs", "witness_seconds"}
//   {"id", "method": "prove", "args": {"wtns_path"}}       -> {"proof", "proof_seconds"}  (snarkjs)
//   {"id", "method": "verify", "args": {"proof", "inputs"}} -> {"valid"}  (snarkjs, every proof)
//   {"id", "method": "prove_zokrates", "args": [...]}      -> zokrates-js' own prover (benchmark)
//   {"id", "method": "ping"}                               -> {"pid"}
// Proofs travel as {a, b, c} of 0x-hex words, b's coordinates real part first.
// Failures answer {"id", "ok": false, "error": {"kind", "message"}}; the worker keeps going.
//
//   node circuits/worker.mjs <build-dir> <keys-dir> [<zokrates-pk>]
import fs from "node:fs";
import path from "node:path";
import readline from "node:readline";
import * as snarkjs from "snarkjs";
import { provider, zokratesVersion } from "./zokrates.mjs";

const [buildDir, keysDir, zokratesPk] = process.argv.slice(2);
if (!buildDir || !keysDir) {
  console.error("usage: worker.mjs <build-dir> <keys-dir> [<zokrates-pk>]");
  process.exit(2);
}

function send(message) {
  process.stdout.write(JSON.stringify(message) + "\n");
}

const quiet = { info() {}, debug() {}, warn() {}, error() {} };
let zk, program, abi, verificationKey, zkey, zokratesKey;
try {
  zk = await provider();
  program = new Uint8Array(fs.readFileSync(path.join(buildDir, "program.bin")));
  abi = JSON.parse(fs.readFileSync(path.join(buildDir, "abi.json"), "utf8"));
  verificationKey = JSON.parse(fs.readFileSync(path.join(keysDir, "verification_key.json"), "utf8"));
  const zkeyPath = path.join(keysDir, "circuit.zkey");
  if (fs.existsSync(zkeyPath)) zkey = new Uint8Array(fs.readFileSync(zkeyPath));
  if (zokratesPk) zokratesKey = new Uint8Array(fs.readFileSync(zokratesPk));
} catch (err) {
  send({ id: null, ok: false, error: { kind: "startup", message: String((err && err.message) || err) } });
  process.exit(3);
}
send({ id: null, ok: true, result: { ready: true, zokrates_version: zokratesVersion, snarkjs_prover: Boolean(zkey) } });

function classify(err) {
  const message = String((err && err.message) || err);
  if (message.startsWith("Execution failed")) return { kind: "unsatisfied", message };
  if (/parse|type|expected|Invalid ZoKrates values/i.test(message)) return { kind: "bad_arguments", message };
  return { kind: "internal", message };
}

const hex = (v) => "0x" + BigInt(v).toString(16).padStart(64, "0");
const dec = (v) => BigInt(v).toString();

function toSnarkjs(proof) {
  return {
    pi_a: [dec(proof.a[0]), dec(proof.a[1]), "1"],
    pi_b: [[dec(proof.b[0][0]), dec(proof.b[0][1])], [dec(proof.b[1][0]), dec(proof.b[1][1])], ["1", "0"]],
    pi_c: [dec(proof.c[0]), dec(proof.c[1]), "1"],
    protocol: "groth16",
    curve: "bn128",
  };
}

function fromSnarkjs(proof) {
  return {
    a: [hex(proof.pi_a[0]), hex(proof.pi_a[1])],
    b: [[hex(proof.pi_b[0][0]), hex(proof.pi_b[0][1])], [hex(proof.pi_b[1][0]), hex(proof.pi_b[1][1])]],
    c: [hex(proof.pi_c[0]), hex(proof.pi_c[1])],
  };
}

function computeWitness(args) {
  try {
    return zk.computeWitness({ program, abi }, args, { snarkjs: true });
  } catch (err) {
    throw classify(err);
  }
}

function witness(request) {
  if (!request || !Array.isArray(request.args) || typeof request.wtns_path !== "string") {
    throw { kind: "bad_request", message: "witness needs {args, wtns_path}" };
  }
  const t = performance.now();
  const result = computeWitness(request.args);
  fs.writeFileSync(request.wtns_path, result.snarkjs.witness);
  return { witness_seconds: (performance.now() - t) / 1000 };
}

async function publicSignals(wtnsPath) {
  const values = await snarkjs.wtns.exportJson(wtnsPath);
  return values.slice(1, 1 + verificationKey.nPublic).map(hex);
}

async function proveSnarkjs(request) {
  if (!zkey) throw { kind: "bad_request", message: "this key set has no circuit.zkey: the snarkjs backend cannot prove" };
  if (!request || typeof request.wtns_path !== "string") throw { kind: "bad_request", message: "prove needs {wtns_path}" };
  const t = performance.now();
  const { proof } = await snarkjs.groth16.prove(zkey, request.wtns_path, quiet);
  return { proof: fromSnarkjs(proof), proof_seconds: (performance.now() - t) / 1000 };
}

function proveZokrates(args) {
  if (!zokratesKey) throw { kind: "bad_request", message: "no ZoKrates proving key was given" };
  let t = performance.now();
  let result;
  try {
    result = zk.computeWitness({ program, abi }, args);
  } catch (err) {
    throw classify(err);
  }
  const witnessSeconds = (performance.now() - t) / 1000;
  t = performance.now();
  const proof = zk.generateProof(program, result.witness, zokratesKey);
  return { proof: proof.proof, inputs: proof.inputs, witness_seconds: witnessSeconds, proof_seconds: (performance.now() - t) / 1000 };
}

async function handle(method, args) {
  switch (method) {
    case "ping":
      return { pid: process.pid };
    case "witness": {
      const result = witness(args);
      return { ...result, inputs: await publicSignals(args.wtns_path) };
    }
    case "prove":
      return proveSnarkjs(args);
    case "verify": {
      if (!args || !args.proof || !Array.isArray(args.inputs)) throw { kind: "bad_request", message: "verify needs {proof, inputs}" };
      let proof;
      try {
        proof = toSnarkjs(args.proof);
      } catch (err) {
        throw { kind: "bad_request", message: `not a proof: ${err.message || err}` };
      }
      const t = performance.now();
      const valid = await snarkjs.groth16.verify(verificationKey, args.inputs.map(dec), proof, quiet);
      return { valid: Boolean(valid), seconds: (performance.now() - t) / 1000 };
    }
    case "prove_zokrates":
      if (!Array.isArray(args)) throw { kind: "bad_request", message: "prove_zokrates needs an args array" };
      return proveZokrates(args);
    default:
      throw { kind: "bad_request", message: `unknown method ${JSON.stringify(method)}` };
  }
}

const lines = readline.createInterface({ input: process.stdin });
for await (const line of lines) {
  if (!line.trim()) continue;
  let request;
  try {
    request = JSON.parse(line);
  } catch (err) {
    send({ id: null, ok: false, error: { kind: "bad_request", message: "request is not JSON" } });
    continue;
  }
  const { id, method, args } = request;
  try {
    send({ id, ok: true, result: await handle(method, args) });
  } catch (err) {
    const error = err && err.kind ? err : { kind: "internal", message: String((err && err.message) || err) };
    send({ id, ok: false, error });
  }
}
process.exit(0);
