#!/usr/bin/env node
// zokrates-js' own one-party Groth16 setup (OS entropy): the proving key of the benchmark's
// baseline prover (`wafl bench prove`). Never deployed.
//
//   node circuits/zokrates_setup.mjs <build-dir> <out-pk>
import fs from "node:fs";
import path from "node:path";
import { provider } from "./zokrates.mjs";

const [buildDir, outPath] = process.argv.slice(2);
if (!buildDir || !outPath) {
  console.error("usage: zokrates_setup.mjs <build-dir> <out-pk>");
  process.exit(2);
}
const zk = await provider();
const program = new Uint8Array(fs.readFileSync(path.join(buildDir, "program.bin")));
const keypair = zk.setup(program);
fs.mkdirSync(path.dirname(outPath), { recursive: true });
fs.writeFileSync(outPath + ".partial", keypair.pk);
fs.renameSync(outPath + ".partial", outPath);
