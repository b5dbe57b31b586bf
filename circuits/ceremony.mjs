#!/usr/bin/env node
// The Groth16 setup ceremony (phase 1 and BGM17 phase 2, as snarkjs runs it) over snarkjs' JS API.
// All curve arithmetic is snarkjs'; this script only sequences it and reports JSON.
//
//   node circuits/ceremony.mjs phase1-local  --power N --out FILE.ptau
//   node circuits/ceremony.mjs phase1-verify --ptau FILE
//   node circuits/ceremony.mjs init          --r1cs FILE --ptau FILE --out FILE.zkey
//   node circuits/ceremony.mjs contribute    --in FILE.zkey --out FILE.zkey --name NAME
//   node circuits/ceremony.mjs contributions --zkey FILE
//   node circuits/ceremony.mjs verify        --r1cs FILE --ptau FILE --zkey FILE [--vk FILE.json --sol FILE.sol]
//   node circuits/ceremony.mjs beacon        --in FILE.zkey --out FILE.zkey --beacon HEX [--name NAME]
//   node circuits/ceremony.mjs export        --zkey FILE --vk FILE.json --sol FILE.sol
//
// One JSON object on stdout on success; on failure one line on stderr and exit 1 (2: usage).
// Contribution entropy is drawn here from crypto.randomBytes and handed straight to snarkjs
// (which mixes in its own); no option, environment variable or file can supply it, and it is
// never written or logged. Hashes are hex (lowercase, no separators) of snarkjs' 64-byte blake2b.
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import * as snarkjs from "snarkjs";
import { blake2b } from "@noble/hashes/blake2b";
import { readBinFile } from "@iden3/binfileutils";

// snarkjs' package exports only its top level; the contributions section (MPC parameters) is read
// with snarkjs' own reader, imported by file from the installed package.
const snarkjsMain = fileURLToPath(import.meta.resolve("snarkjs"));
const zkeyUtils = await import(pathToFileURL(path.join(path.dirname(snarkjsMain), "src", "zkey_utils.js")).href);

const BEACON_ITERATIONS_EXP = 10;
const MIN_BEACON_BYTES = 32;

class CeremonyFailure extends Error {}

// snarkjs reports rejections through its logger (and a few through console.log): collect them so
// a failure can name the reason and stdout stays one JSON object.
const messages = [];
const verbose = process.env.WAFL_CEREMONY_VERBOSE === "1";
function record(level) {
  return (...parts) => {
    const line = parts.map(String).join(" ");
    messages.push({ level, line });
    if (verbose) process.stderr.write(`[${level}] ${line}\n`);
  };
}
const logger = {
  error: record("error"),
  warn: record("warn"),
  info: record("info"),
  debug: () => {},
  log: record("info"),
};
console.log = record("console");
console.info = record("console");
console.warn = record("console");

function lastProblem() {
  const problems = messages.filter((m) => m.level === "error" || (m.level === "console" && /INVALID/.test(m.line)));
  if (!problems.length) return "no reason given";
  // snarkjs counts contributions from 0; the transcript and `wafl ceremony verify` from 1.
  return problems[problems.length - 1].line.trim().replace(/INVALID\((\d+)\):?/, (_, i) => `contribution #${Number(i) + 1}:`);
}

function hex(bytes) {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("hex");
}

function parseArgs(argv, spec) {
  const out = {};
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    if (!flag.startsWith("--") || !(flag.slice(2) in spec)) throw new UsageError(`unknown option ${flag}`);
    if (i + 1 >= argv.length) throw new UsageError(`${flag} needs a value`);
    out[flag.slice(2)] = argv[++i];
  }
  for (const [key, required] of Object.entries(spec)) {
    if (required && out[key] === undefined) throw new UsageError(`--${key} is required`);
  }
  return out;
}

class UsageError extends Error {}

function mustExist(file, what) {
  if (!fs.existsSync(file)) throw new CeremonyFailure(`${what} ${file} does not exist`);
}

// Write to a staging name and rename, so no half-written output is ever taken for a result.
async function staged(target, make) {
  const staging = `${target}.partial-${process.pid}`;
  fs.rmSync(staging, { force: true });
  try {
    const result = await make(staging);
    fs.renameSync(staging, target);
    return result;
  } finally {
    fs.rmSync(staging, { force: true });
  }
}

function freshEntropy() {
  // 64 fresh bytes from the OS, as hex because snarkjs takes entropy as a string.
  return crypto.randomBytes(64).toString("hex");
}

async function readContributions(zkeyFile) {
  const { fd, sections } = await readBinFile(zkeyFile, "zkey", 2);
  try {
    const header = await zkeyUtils.readHeader(fd, sections, false);
    if (header.protocol !== "groth16") throw new CeremonyFailure(`${zkeyFile} is not a Groth16 zkey`);
    const curve = await snarkjs.curves.getCurveFromQ(header.q);
    const mpc = await zkeyUtils.readMPCParams(fd, curve, sections);
    const contributions = mpc.contributions.map((c, index) => {
      // The same hash snarkjs prints for a contribution: blake2b-512 of its public key.
      const hasher = blake2b.create({ dkLen: 64 });
      zkeyUtils.hashPubKey(hasher, curve, c);
      const entry = { index: index + 1, name: c.name ?? "", hash: hex(hasher.digest()), type: c.type === 1 ? "beacon" : "contribution" };
      if (c.type === 1) {
        entry.beacon = hex(c.beaconHash);
        entry.iterations_exp = c.numIterationsExp;
      }
      return entry;
    });
    return { circuit_hash: hex(mpc.csHash), contributions };
  } finally {
    await fd.close();
  }
}

// The verification key (snarkjs JSON) and snarkjs' Solidity verifier from its bundled template.
async function exportKeys(zkeyFile, vkFile, solFile) {
  const vk = await snarkjs.zKey.exportVerificationKey(zkeyFile, logger);
  const templateFile = path.join(path.dirname(snarkjsMain), "templates", "verifier_groth16.sol.ejs");
  const templates = { groth16: fs.readFileSync(templateFile, "utf8") };
  const solidity = await snarkjs.zKey.exportSolidityVerifier(zkeyFile, templates, logger);
  await staged(vkFile, async (staging) => fs.writeFileSync(staging, JSON.stringify(vk, null, 1) + "\n"));
  await staged(solFile, async (staging) => fs.writeFileSync(staging, solidity));
}

const commands = {
  async "phase1-local"(argv) {
    const args = parseArgs(argv, { power: true, out: true });
    const power = Number(args.power);
    if (!Number.isInteger(power) || power < 1 || power > 28) throw new UsageError("--power must be an integer 1..28");
    const curve = await snarkjs.curves.getCurveFromName("bn128");
    const t = performance.now();
    const base = `${args.out}.${process.pid}`;
    const [fresh, contributed] = [`${base}.0.ptau`, `${base}.1.ptau`];
    try {
      await snarkjs.powersOfTau.newAccumulator(curve, power, fresh, logger);
      const hash = await snarkjs.powersOfTau.contribute(fresh, contributed, "wafl local phase 1", freshEntropy(), logger);
      await staged(args.out, (staging) => snarkjs.powersOfTau.preparePhase2(contributed, staging, logger));
      return { ptau: args.out, power, contribution_hash: hex(hash), seconds: (performance.now() - t) / 1000 };
    } finally {
      fs.rmSync(fresh, { force: true });
      fs.rmSync(contributed, { force: true });
    }
  },

  async "phase1-verify"(argv) {
    const args = parseArgs(argv, { ptau: true });
    mustExist(args.ptau, "ptau file");
    if (!(await snarkjs.powersOfTau.verify(args.ptau, logger))) {
      throw new CeremonyFailure(`the powers of tau file ${args.ptau} does not verify: ${lastProblem()}`);
    }
    return { ok: true };
  },

  async init(argv) {
    const args = parseArgs(argv, { r1cs: true, ptau: true, out: true });
    mustExist(args.r1cs, "r1cs file");
    mustExist(args.ptau, "ptau file");
    const csHash = await staged(args.out, async (staging) => {
      const result = await snarkjs.zKey.newZKey(args.r1cs, args.ptau, staging, logger);
      // newZKey reports a mismatch (curve, size, unprepared ptau) by logging and returning -1.
      if (!(result instanceof Uint8Array)) throw new CeremonyFailure(`cannot start phase 2: ${lastProblem()}`);
      return result;
    });
    return { zkey: args.out, circuit_hash: hex(csHash) };
  },

  async contribute(argv) {
    const args = parseArgs(argv, { in: true, out: true, name: true });
    mustExist(args.in, "zkey");
    // What the contribution was made on, for the caller to check against its transcript.
    const previous = await readContributions(args.in);
    const hash = await staged(args.out, (staging) =>
      snarkjs.zKey.contribute(args.in, staging, args.name, freshEntropy(), logger),
    );
    return { zkey: args.out, name: args.name, hash: hex(hash), previous };
  },

  async contributions(argv) {
    const args = parseArgs(argv, { zkey: true });
    mustExist(args.zkey, "zkey");
    return await readContributions(args.zkey);
  },

  async verify(argv) {
    const args = parseArgs(argv, { r1cs: true, ptau: true, zkey: true, vk: false, sol: false });
    if ((args.vk === undefined) !== (args.sol === undefined)) throw new UsageError("--vk and --sol go together");
    mustExist(args.r1cs, "r1cs file");
    mustExist(args.ptau, "ptau file");
    mustExist(args.zkey, "zkey");
    const ok = await snarkjs.zKey.verifyFromR1cs(args.r1cs, args.ptau, args.zkey, logger);
    if (ok !== true) throw new CeremonyFailure(`the zkey ${args.zkey} does not verify: ${lastProblem()}`);
    // Exporting here too saves a process (and a curve set-up) when the keys are wanted.
    if (args.vk !== undefined) await exportKeys(args.zkey, args.vk, args.sol);
    return { ok: true, ...(await readContributions(args.zkey)) };
  },

  async beacon(argv) {
    const args = parseArgs(argv, { in: true, out: true, beacon: true, name: false });
    mustExist(args.in, "zkey");
    if (!/^([0-9a-fA-F]{2})+$/.test(args.beacon) || args.beacon.length / 2 < MIN_BEACON_BYTES) {
      throw new CeremonyFailure(`the beacon must be hex of at least ${MIN_BEACON_BYTES} bytes`);
    }
    const hash = await staged(args.out, async (staging) => {
      const result = await snarkjs.zKey.beacon(
        args.in, staging, args.name ?? "final beacon", args.beacon, BEACON_ITERATIONS_EXP, logger,
      );
      if (!(result instanceof Uint8Array)) throw new CeremonyFailure(`cannot apply the beacon: ${lastProblem()}`);
      return result;
    });
    return { zkey: args.out, hash: hex(hash) };
  },

  async export(argv) {
    const args = parseArgs(argv, { zkey: true, vk: true, sol: true });
    mustExist(args.zkey, "zkey");
    await exportKeys(args.zkey, args.vk, args.sol);
    return { vk: args.vk, sol: args.sol };
  },
};

function finish(code, stream, text) {
  // Exit explicitly: snarkjs' curve keeps worker threads alive.
  stream.write(text, () => process.exit(code));
}

const [command, ...rest] = process.argv.slice(2);
try {
  if (!(command in commands)) throw new UsageError(`unknown command ${command ?? "(none)"}; one of ${Object.keys(commands).join(", ")}`);
  const result = await commands[command](rest);
  finish(0, process.stdout, JSON.stringify(result) + "\n");
} catch (err) {
  const text = (err instanceof Error ? err.message : String(err)).replace(/\s+/g, " ").trim();
  if (err instanceof UsageError) finish(2, process.stderr, `usage: ${text}\n`);
  else if (err instanceof CeremonyFailure) finish(1, process.stderr, `${text}\n`);
  else finish(1, process.stderr, `${command} failed: ${text || err?.constructor?.name || "unknown error"}\n`);
}
