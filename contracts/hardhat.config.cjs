// Hardhat 2's in-process EVM (EDR) as WaFL's second local node, next to anvil. Started by
// wafl/chain/hardhat.py as `hardhat --config contracts/hardhat.config.cjs node`: Hardhat 2 will not
// start without a config file, and this one only configures the node. It compiles nothing (the
// contracts are built by contracts/build.mjs), forks nothing and needs no network.
//
// The Python side passes the node's settings through the environment:
//   WAFL_HARDHAT_CHAIN_ID        chain id (default 31337, as anvil's)
//   WAFL_HARDHAT_BLOCK_TIME_MS   mine a block every so many milliseconds instead of one per
//                                transaction (anvil's --block-time)
//   WAFL_HARDHAT_THROW_ON_TX_FAILURES=true   Hardhat's own default, see below
const env = process.env;
const blockTimeMs = env.WAFL_HARDHAT_BLOCK_TIME_MS ? Number(env.WAFL_HARDHAT_BLOCK_TIME_MS) : undefined;

module.exports = {
  networks: {
    hardhat: {
      chainId: Number(env.WAFL_HARDHAT_CHAIN_ID || 31337),
      // The hardfork anvil runs (wafl/chain/anvil.py), so gas figures compare.
      hardfork: "osaka",
      // One block per transaction, or interval mining only (no automine), as anvil does.
      mining: blockTimeMs === undefined ? { auto: true } : { auto: false, interval: blockTimeMs },
      // The tests fund fresh random keys through hardhat_setBalance; the well-known default
      // accounts are not used, so one is enough.
      accounts: { count: 1 },
      // A transaction that reverts is mined either way. By default Hardhat then answers
      // eth_sendRawTransaction with an error (-32603, the hash in error.data.txHash) where anvil
      // and geth return the hash and a receipt with status 0: here it returns the hash, as they do.
      throwOnTransactionFailures: env.WAFL_HARDHAT_THROW_ON_TX_FAILURES === "true",
      // A reverting eth_call or eth_estimateGas stays an error (its revert data nested in
      // error.data.data; anvil and geth give it in error.data).
      throwOnCallFailures: true,
    },
  },
};
