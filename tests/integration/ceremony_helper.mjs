#!/usr/bin/env node
// Test helper for tests/test_ceremony.py: compile a ZoKrates circuit to a snarkjs r1cs, compute
// a witness, prove from a zkey and verify a proof, all with the pinned zokrates-js and snarkjs.
//
//   node ceremony_helper.mjs compile <src.zok> <out.r1cs>
//   node ceremony_helper.mjs prove <src.zok> <zkey> <args.json> <out-proof.json>
//   node ceremony_helper.mjs verify <verification_key.json> <proof.json>
// prove writes {proof, publicSignals}; verify prints {"ok": true|false}.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import * as snarkjs from "snarkjs";
import { initialize } from "zokrates-js";

async function compile(src) {
  const zk = (await initialize()).withOptions({ backend: "ark", curve: "bn128", scheme: "g16" });
  return { zk, art: zk.compile(fs.readFileSync(src, "utf8"), { snarkjs: true }) };
}

const [cmd, ...args] = process.argv.slice(2);
let result;
if (cmd === "compile") {
  const { art } = await compile(args[0]);
  fs.writeFileSync(args[1], art.snarkjs.program);
  result = { constraints: art.constraintCount };
} else if (cmd === "prove") {
  const { zk, art } = await compile(args[0]);
  const values = JSON.parse(fs.readFileSync(args[2], "utf8"));
  const wtns = zk.computeWitness(art, values, { snarkjs: true }).snarkjs.witness;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "wafl-ceremony-"));
  const wtnsPath = path.join(dir, "witness.wtns");
  fs.writeFileSync(wtnsPath, wtns);
  const { proof, publicSignals } = await snarkjs.groth16.prove(args[1], wtnsPath);
  fs.rmSync(dir, { recursive: true });
  fs.writeFileSync(args[3], JSON.stringify({ proof, publicSignals }));
  result = { publicSignals };
} else if (cmd === "verify") {
  const vk = JSON.parse(fs.readFileSync(args[0], "utf8"));
  const { proof, publicSignals } = JSON.parse(fs.readFileSync(args[1], "utf8"));
  result = { ok: await snarkjs.groth16.verify(vk, publicSignals, proof) };
} else {
  console.error(`unknown command ${cmd}`);
  process.exit(2);
}
process.stdout.write(JSON.stringify(result) + "\n", () => process.exit(0));
