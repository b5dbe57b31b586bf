#!/usr/bin/env node
// Compile WaFL's contracts with the pinned solc from npm.
//
//   node contracts/build.mjs <out.json>                           WaflAggregator, WaflVerifier
//   node contracts/build.mjs <out.json> --verifier-only <Verifier.sol>   a plain exported verifier
//
// The contracts serve every configuration: the verifier takes its key at deployment. A plain
// exported verifier (one public input per weight) is only the benchmark's naive baseline.
// Writes {contracts: {Name: {abi, bytecode, deployed_size}}, solc}.
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";

const require = createRequire(import.meta.url);
const solc = require("solc");
const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.dirname(here);

const [outPath, flag, verifierPath] = process.argv.slice(2);
const verifierOnly = flag === "--verifier-only";
if (!outPath || (flag !== undefined && !(verifierOnly && verifierPath))) {
  console.error("usage: build.mjs <out.json> [--verifier-only <Verifier.sol>]");
  process.exit(2);
}
const sources = {};
if (verifierOnly) {
  sources["src/Verifier.sol"] = { content: fs.readFileSync(verifierPath, "utf8") };
} else {
  for (const name of fs.readdirSync(path.join(here, "src"))) {
    if (name.endsWith(".sol")) sources[`src/${name}`] = { content: fs.readFileSync(path.join(here, "src", name), "utf8") };
  }
}
const wanted = verifierOnly ? ["Verifier", "Groth16Verifier"] : ["WaflAggregator", "WaflVerifier"];

function findImports(importPath) {
  const candidates = [path.join(root, "node_modules", importPath), path.join(here, importPath)];
  for (const candidate of candidates) {
    if (fs.existsSync(candidate)) return { contents: fs.readFileSync(candidate, "utf8") };
  }
  return { error: `import not found: ${importPath}` };
}

const input = {
  language: "Solidity",
  sources,
  settings: {
    optimizer: { enabled: true, runs: 10000 },
    viaIR: true,
    evmVersion: "cancun",
    outputSelection: { "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] } },
  },
};
const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports }));
const errors = (output.errors || []).filter((e) => e.severity === "error");
for (const e of output.errors || []) if (e.severity !== "error") console.error(e.formattedMessage);
if (errors.length) {
  for (const e of errors) console.error(e.formattedMessage);
  process.exit(1);
}
const contracts = {};
for (const file of Object.values(output.contracts)) {
  for (const [name, c] of Object.entries(file)) {
    if (wanted.includes(name)) {
      contracts[name] = {
        abi: c.abi,
        bytecode: "0x" + c.evm.bytecode.object,
        deployed_size: c.evm.deployedBytecode.object.length / 2,
      };
    }
  }
}
fs.mkdirSync(path.dirname(outPath), { recursive: true });
fs.writeFileSync(outPath, JSON.stringify({ solc: solc.version(), contracts }, null, 1));
console.log(JSON.stringify(Object.fromEntries(Object.entries(contracts).map(([n, c]) => [n, c.deployed_size]))));
