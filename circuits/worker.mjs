#!/usr/bin/env node
// Long-lived ZoKrates prover: loads one circuit's program and proving key once, then answers
// JSON-line requests on stdin, one at a time, on stdout:
//   {"id": 1, "method": "prove", "args": [...]}  ->  {"id": 1, "ok": true, "result": {...}}
//   {"id": 2, "method": "verify", "args": {"proof", "inputs"}}  ->  {"result": {"valid"}}
//   {"id": 3, "method": "ping"}                  ->  {"id": 2, "ok": true, "result": {...}}
// Failures answer {"id", "ok": false, "error": {"kind", "message"}}; the worker keeps going.
//
//   node circuits/worker.mjs <build-dir>
import fs from "node:fs";
import path from "node:path";
import readline from "node:readline";
import { provider, zokratesVersion } from "./zokrates.mjs";

const buildDir = process.argv[2];
if (!buildDir) {
  console.error("usage: worker.mjs <build-dir>");
  process.exit(2);
}

function send(message) {
  process.stdout.write(JSON.stringify(message) + "\n");
}

let zk, program, provingKey, abi, verificationKey;
try {
  zk = await provider();
  program = new Uint8Array(fs.readFileSync(path.join(buildDir, "program.bin")));
  provingKey = new Uint8Array(fs.readFileSync(path.join(buildDir, "pk.bin")));
  abi = JSON.parse(fs.readFileSync(path.join(buildDir, "abi.json"), "utf8"));
  verificationKey = JSON.parse(fs.readFileSync(path.join(buildDir, "vk.json"), "utf8"));
} catch (err) {
  send({ id: null, ok: false, error: { kind: "startup", message: String(err && err.message || err) } });
  process.exit(3);
}
send({ id: null, ok: true, result: { ready: true, zokrates_version: zokratesVersion } });

function classify(err) {
  const message = String((err && err.message) || err);
  if (message.startsWith("Execution failed")) return { kind: "unsatisfied", message };
  if (/parse|type|expected|Invalid ZoKrates values/i.test(message)) return { kind: "bad_arguments", message };
  return { kind: "internal", message };
}

function prove(args) {
  let t = performance.now();
  let witness;
  try {
    ({ witness } = zk.computeWitness({ program, abi }, args));
  } catch (err) {
    throw classify(err);
  }
  const witnessSeconds = (performance.now() - t) / 1000;
  t = performance.now();
  let proof;
  try {
    proof = zk.generateProof(program, witness, provingKey);
  } catch (err) {
    throw { kind: "internal", message: String((err && err.message) || err) };
  }
  return {
    proof: proof.proof,
    inputs: proof.inputs,
    witness_seconds: witnessSeconds,
    proof_seconds: (performance.now() - t) / 1000,
  };
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
    if (method === "ping") send({ id, ok: true, result: { pid: process.pid } });
    else if (method === "verify") {
      // args: {proof, inputs} as prove returned them (inputs may be altered by the caller).
      if (!args || !args.proof || !Array.isArray(args.inputs)) throw { kind: "bad_request", message: "verify needs {proof, inputs}" };
      const ok = zk.verify(verificationKey, { scheme: "g16", curve: "bn128", proof: args.proof, inputs: args.inputs });
      send({ id, ok: true, result: { valid: ok } });
    } else if (method === "prove") {
      if (!Array.isArray(args)) throw { kind: "bad_request", message: "prove needs an args array" };
      send({ id, ok: true, result: prove(args) });
    } else throw { kind: "bad_request", message: `unknown method ${JSON.stringify(method)}` };
  } catch (err) {
    const error = err && err.kind ? err : { kind: "internal", message: String(err) };
    send({ id, ok: false, error });
  }
}
