#!/usr/bin/env node
// Masking keys for secure aggregation (docs/design.md section 12), computed by ZoKrates' own
// stdlib (Baby Jubjub scalar multiplication, Poseidon) so that they match the circuit exactly.
// The secret comes on stdin (never on the command line, which other users can read); one JSON
// line answers on stdout.
//
//   node circuits/masking.mjs <cache-dir> public-key          stdin {"secret"} -> {"x", "y"}
//   node circuits/masking.mjs <cache-dir> masks <words>       stdin {"secret", "peer": [x, y], "round"}
//                                                             -> {"shared_x", "masks": [...]}
// Each compiled program is kept in <cache-dir>/<sha256 of its source and the compiler>/.
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { provider, zokratesVersion } from "./zokrates.mjs";

const PROGRAMS = {
  "public-key": `
from "ecc/babyjubjubParams" import BABYJUBJUB_PARAMS;
import "ecc/edwardsScalarMult" as scalar_mult;
import "utils/pack/bool/nonStrictUnpack256" as unpack256;
def main(private field secret) -> field[2] {
    return scalar_mult(unpack256(secret), [BABYJUBJUB_PARAMS.Gu, BABYJUBJUB_PARAMS.Gv], BABYJUBJUB_PARAMS);
}`,
  masks: (words) => `
from "ecc/babyjubjubParams" import BABYJUBJUB_PARAMS;
import "ecc/edwardsScalarMult" as scalar_mult;
import "hashes/poseidon/poseidon" as poseidon;
import "utils/pack/bool/nonStrictUnpack256" as unpack256;
def main(private field secret, field[2] peer, field round) -> field[${words + 1}] {
    field[2] shared = scalar_mult(unpack256(secret), peer, BABYJUBJUB_PARAMS);
    field[${words + 1}] mut out = [shared[0]; ${words + 1}];
    field mut word = 0;
    for u32 k in 0..${words} {
        out[k + 1] = poseidon([shared[0], round, word]);
        word = word + 1;
    }
    return out;
}`,
};

const [cacheDir, command, wordsArg] = process.argv.slice(2);
const words = Number(wordsArg);
if (!cacheDir || !(command in PROGRAMS) || (command === "masks" && !(Number.isInteger(words) && words >= 1))) {
  console.error("usage: masking.mjs <cache-dir> public-key | masks <words>   (request as JSON on stdin)");
  process.exit(2);
}
let request;
try {
  request = JSON.parse(fs.readFileSync(0, "utf8"));
} catch {
  console.error("masking.mjs: the request on stdin is not JSON");
  process.exit(2);
}
const zk = await provider();
const source = command === "masks" ? PROGRAMS.masks(words) : PROGRAMS[command];
const cached = path.join(cacheDir, crypto.createHash("sha256").update(source + zokratesVersion).digest("hex").slice(0, 16));
let artifacts;
if (fs.existsSync(path.join(cached, "abi.json"))) {
  artifacts = {
    program: new Uint8Array(fs.readFileSync(path.join(cached, "program.bin"))),
    abi: JSON.parse(fs.readFileSync(path.join(cached, "abi.json"), "utf8")),
  };
} else {
  artifacts = zk.compile(source);
  const staging = `${cached}.${process.pid}.partial`;
  fs.mkdirSync(staging, { recursive: true });
  fs.writeFileSync(path.join(staging, "program.bin"), artifacts.program);
  fs.writeFileSync(path.join(staging, "abi.json"), JSON.stringify(artifacts.abi));
  fs.rmSync(cached, { recursive: true, force: true });
  fs.renameSync(staging, cached);
}
const args = command === "masks" ? [request.secret, request.peer, request.round] : [request.secret];
let output;
try {
  output = JSON.parse(zk.computeWitness(artifacts, args.map((v) => (Array.isArray(v) ? v.map(String) : String(v)))).output);
} catch {
  // Never echo the request or ZoKrates' message about it: they hold the secret.
  console.error("masking.mjs: ZoKrates refused the arguments (a secret, key or round that is not a field element)");
  process.exit(3);
}
const out = command === "masks" ? { shared_x: output[0], masks: output.slice(1) } : { x: output[0], y: output[1] };
process.stdout.write(JSON.stringify(out) + "\n");
