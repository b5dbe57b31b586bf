#!/usr/bin/env node
// Compile a rendered circuit and export its constraint system for the Groth16 keys.
//
//   node circuits/build.mjs <source.zok> <out-dir>
//
// Writes program.bin and abi.json (ZoKrates' program: the witness is computed from it),
// circuit.r1cs (the same constraint system in snarkjs' format: what a setup ceremony and the
// provers work on) and build.json to <out-dir>. No keys are made here: a federation's keys come
// from `wafl ceremony`, development keys from a one-party setup (wafl/zk/keys.py).
import fs from "node:fs";
import path from "node:path";
import { provider, zokratesVersion } from "./zokrates.mjs";

const [sourcePath, outDir] = process.argv.slice(2);
if (!sourcePath || !outDir) {
  console.error("usage: build.mjs <source.zok> <out-dir>");
  process.exit(2);
}
fs.mkdirSync(outDir, { recursive: true });
const zk = await provider();
const source = fs.readFileSync(sourcePath, "utf8");

const t = performance.now();
const artifacts = zk.compile(source, { location: path.resolve(sourcePath), snarkjs: true });
const compileSeconds = (performance.now() - t) / 1000;

fs.writeFileSync(path.join(outDir, "program.bin"), artifacts.program);
fs.writeFileSync(path.join(outDir, "abi.json"), JSON.stringify(artifacts.abi, null, 2));
fs.writeFileSync(path.join(outDir, "circuit.r1cs"), artifacts.snarkjs.program);
fs.writeFileSync(
  path.join(outDir, "build.json"),
  JSON.stringify({
    zokrates_version: zokratesVersion,
    constraints: artifacts.constraintCount,
    compile_seconds: compileSeconds,
  }, null, 2),
);
console.log(JSON.stringify({ constraints: artifacts.constraintCount, compileSeconds }));
