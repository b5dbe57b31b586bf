// Shared zokrates-js setup for the build script and the prover worker.
import { initialize, metadata } from "zokrates-js";

export const OPTIONS = { backend: "ark", curve: "bn128", scheme: "g16" };

export async function provider() {
  return (await initialize()).withOptions(OPTIONS);
}

export const zokratesVersion = metadata.version;
