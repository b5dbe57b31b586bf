#!/usr/bin/env node
// Compile a rendered circuit, run the Groth16 setup and export the Solidity verifier.
//
//   node circuits/build.mjs <source.zok> <out-dir> <entropy-hex>
//
// Writes program.bin, abi.json, vk.json, pk.bin, Verifier.sol and build.json to <out-dir>.
// The setup is seeded by <entropy-hex> so that a build is reproducible: these are development
// keys. A production federation replaces them with the output of a setup ceremony.
import fs from "node:fs";
import path from "node:path";
import { provider, zokratesVersion } from "./zokrates.mjs";

const [sourcePath, outDir, entropy] = process.argv.slice(2);
if (!sourcePath || !outDir || !entropy) {
  console.error("usage: build.mjs <source.zok> <out-dir> <entropy-hex>");
  process.exit(2);
}
fs.mkdirSync(outDir, { recursive: true });
const zk = await provider();
const source = fs.readFileSync(sourcePath, "utf8");

let t = performance.now();
const artifacts = zk.compile(source, { location: path.resolve(sourcePath) });
const compileSeconds = (performance.now() - t) / 1000;

t = performance.now();
const keypair = zk.setup(artifacts.program, entropy);
const setupSeconds = (performance.now() - t) / 1000;

const verifier = zk.exportSolidityVerifier(keypair.vk);
fs.writeFileSync(path.join(outDir, "program.bin"), artifacts.program);
fs.writeFileSync(path.join(outDir, "abi.json"), JSON.stringify(artifacts.abi, null, 2));
fs.writeFileSync(path.join(outDir, "vk.json"), JSON.stringify(keypair.vk, null, 2));
fs.writeFileSync(path.join(outDir, "pk.bin"), keypair.pk);
fs.writeFileSync(path.join(outDir, "Verifier.sol"), verifier);
fs.writeFileSync(
  path.join(outDir, "build.json"),
  JSON.stringify({
    zokrates_version: zokratesVersion,
    constraints: artifacts.constraintCount,
    compile_seconds: compileSeconds,
    setup_seconds: setupSeconds,
    pk_bytes: keypair.pk.length,
  }, null, 2),
);
console.log(JSON.stringify({ constraints: artifacts.constraintCount, compileSeconds, setupSeconds }));
