// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {IWaflVerifier} from "./IWaflVerifier.sol";

/// @title Split Groth16 verifier over the verification key it is deployed with.
/// @dev One contract for every circuit: the key (a ceremony's, or development keys in tests)
/// is a constructor argument, and `keyHash` (keccak256 of the packed key words) is what
/// participants attest and the deployment artifact records. The key is kept as the code of a
/// data contract (SSTORE2): one extcodecopy costs ~6 gas per point, against ~860 gas per public
/// input for a key built in memory on every call. The input sum is split (round share + update
/// share). Every precompile call gets exactly its EIP-1108 price, so an invalid point costs that
/// price and no more (a call with all the gas would burn it on failure), and public inputs must
/// be scalar field elements (ecMul reduces a scalar modulo the group order, so word + r would
/// verify like word).
contract WaflVerifier is IWaflVerifier {
    /// @dev BN254 base field modulus, for negating G1 points.
    uint256 private constant Q = 21888242871839275222246405745257275088696311157297823662689037894645226208583;
    /// @dev BN254 scalar field order: every public input must be below it.
    uint256 private constant R = 21888242871839275222246405745257275088548364400416034343698204186575808495617;
    /// @dev EIP-1108 precompile prices: ecAdd, ecMul, and the pairing of four pairs.
    uint256 private constant EC_ADD_GAS = 150;
    uint256 private constant EC_MUL_GAS = 6000;
    uint256 private constant PAIRING_4_GAS = 34000 * 4 + 45000;

    // Layout of the key data (32-byte words): -alpha (2), beta (4), gamma (4), delta (4), with G2
    // coordinates already in EIP-197 order, then IC_0, IC_1, ... (2 words each).
    uint256 private constant ALPHA_BETA_BYTES = 6 * 32;
    uint256 private constant GAMMA_OFFSET = 6 * 32;
    uint256 private constant DELTA_OFFSET = 10 * 32;
    uint256 private constant IC_OFFSET = 14 * 32;

    /// @dev alpha (2 words), beta, gamma, delta (4 each, EIP-197 order): then IC_0, IC_1, ...
    uint256 private constant FIXED_KEY_WORDS = 14;

    uint256 public immutable nWords;
    /// @dev Masking-key slots of a round's set: 0 for plain updates.
    uint256 public immutable setSize;
    bytes32 public immutable keyHash;
    address private immutable _key;

    /// @param key alpha, beta, gamma, delta, IC_0 .. IC_{2n+2+2S} as words, G2 coordinates in the
    /// precompile's order (imaginary part first); n = nWords. See wafl/zk/keys.py (vk_words).
    /// @param setSize_ S, the masking-key slots of a round's set (0: plain updates).
    constructor(uint256[] memory key, uint256 setSize_) {
        // inputs = 2 * nWords + 2 + 2 * S (plain: global words, round, update words, sender; masked:
        // masked words, global words, round, set keys, index): 2n + 3 + 2S IC points, an odd
        // number, with n >= 1.
        if (
            key.length < FIXED_KEY_WORDS + 2 * 5 || (key.length - FIXED_KEY_WORDS) % 4 != 2
                || setSize_ > key.length || (key.length - FIXED_KEY_WORDS) / 2 < 5 + 2 * setSize_
        ) {
            revert WaflVerifier__BadKey(key.length);
        }
        for (uint256 i = 0; i < key.length; ++i) {
            if (key[i] >= Q) revert WaflVerifier__BadKey(key.length);
        }
        nWords = ((key.length - FIXED_KEY_WORDS) / 2 - 3 - 2 * setSize_) / 2;
        setSize = setSize_;
        keyHash = keccak256(abi.encodePacked(key));
        (key[0], key[1]) = _negate(key[0], key[1]);
        _key = _storeCode(abi.encodePacked(key));
    }

    function roundShare(uint256[] calldata globalWords, uint256 round, uint256[] calldata setKeys)
        external
        view
        returns (uint256[2] memory share)
    {
        uint256 n = globalWords.length;
        if (n != nWords) revert WaflVerifier__WrongInputCount(nWords, n);
        uint256 k = setKeys.length;
        if (k != 2 * setSize) revert WaflVerifier__WrongInputCount(2 * setSize, k);
        if (k != 0) return _maskedShare(globalWords, round, setKeys);
        // Plain: IC_0 .. IC_{n+1}, the constant term, the global words and the round.
        for (uint256 i = 0; i < n; ++i) {
            if (globalWords[i] >= R) revert WaflVerifier__InputNotInField(i);
        }
        if (round >= R) revert WaflVerifier__InputNotInField(n);
        uint256[] memory ic = _points(0, n + 2);
        (bool ok, uint256 x, uint256 y) = _msm(ic[0], ic[1], ic, 1, globalWords);
        (ok, x, y) = _mulAdd(ok, x, y, ic[2 + 2 * n], ic[3 + 2 * n], round);
        if (!ok) revert WaflVerifier__BadPoint();
        share = [x, y];
    }

    /// @dev The circuit's outputs (the masked words) come first: IC_0, then IC_{n+1} .. IC_{2n+1+2S},
    /// the global words, the round and the set's keys.
    function _maskedShare(uint256[] calldata globalWords, uint256 round, uint256[] calldata setKeys)
        private
        view
        returns (uint256[2] memory)
    {
        uint256 n = globalWords.length;
        for (uint256 i = 0; i < n; ++i) {
            if (globalWords[i] >= R) revert WaflVerifier__InputNotInField(n + i);
        }
        if (round >= R) revert WaflVerifier__InputNotInField(2 * n);
        for (uint256 i = 0; i < setKeys.length; ++i) {
            if (setKeys[i] >= R) revert WaflVerifier__InputNotInField(2 * n + 1 + i);
        }
        uint256[] memory ic = _pointsAnd(n + 1, n + 1 + setKeys.length, 0);
        // ic: the global words' points, the round's, the keys', then IC_0.
        uint256 last = 2 * (n + 1 + setKeys.length);
        (bool ok, uint256 x, uint256 y) = _msm(ic[last], ic[last + 1], ic, 0, globalWords);
        (ok, x, y) = _mulAdd(ok, x, y, ic[2 * n], ic[2 * n + 1], round);
        bool keysOk;
        (keysOk, x, y) = _msm(x, y, ic, n + 1, setKeys);
        if (!(ok && keysOk)) revert WaflVerifier__BadPoint();
        return [x, y];
    }

    function verifyUpdate(
        uint256[2] calldata share,
        uint256[] calldata updateWords,
        uint256 tag,
        uint256[8] calldata proof
    ) external view returns (bool) {
        uint256 n = updateWords.length;
        if (n != nWords) revert WaflVerifier__WrongInputCount(nWords, n);
        // Coordinates must be canonical field elements: no second encoding of the same proof.
        for (uint256 i = 0; i < 8; ++i) {
            if (proof[i] >= Q) return false;
        }
        // The IC points of the update's own inputs, the words' then the tag's.
        uint256[] memory ic;
        uint256 s = setSize;
        if (s == 0) {
            // The words IC_{n+2} .. IC_{2n+1}, the sender IC_{2n+2}.
            for (uint256 i = 0; i < n; ++i) {
                if (updateWords[i] >= R) revert WaflVerifier__InputNotInField(n + 1 + i);
            }
            if (tag >= R) revert WaflVerifier__InputNotInField(2 * n + 1);
            ic = _points(n + 2, n + 1);
        } else {
            // The masked words IC_1 .. IC_n, the slot index IC_{2n+2+2S}.
            for (uint256 i = 0; i < n; ++i) {
                if (updateWords[i] >= R) revert WaflVerifier__InputNotInField(i);
            }
            uint256 tagPoint = 2 * n + 2 + 2 * s;
            if (tag >= R) revert WaflVerifier__InputNotInField(tagPoint - 1);
            ic = _pointsAnd(1, n, tagPoint);
        }
        (bool ok, uint256 x, uint256 y) = _msm(share[0], share[1], ic, 0, updateWords);
        (ok, x, y) = _mulAdd(ok, x, y, ic[2 * n], ic[2 * n + 1], tag);
        if (!ok) return false;
        return _pairing(x, y, proof);
    }

    /// @dev `count` IC points from index `first`, as 2 * count words.
    function _points(uint256 first, uint256 count) private view returns (uint256[] memory words) {
        words = new uint256[](2 * count);
        address key = _key;
        assembly ("memory-safe") {
            extcodecopy(key, add(words, 0x20), add(1, add(IC_OFFSET, mul(first, 0x40))), mul(count, 0x40))
        }
    }

    /// @dev `count` IC points from index `first`, then the IC point `last`, as 2 * count + 2 words.
    function _pointsAnd(uint256 first, uint256 count, uint256 last) private view returns (uint256[] memory words) {
        words = new uint256[](2 * count + 2);
        address key = _key;
        assembly ("memory-safe") {
            let out := add(words, 0x20)
            extcodecopy(key, out, add(1, add(IC_OFFSET, mul(first, 0x40))), mul(count, 0x40))
            extcodecopy(key, add(out, mul(count, 0x40)), add(1, add(IC_OFFSET, mul(last, 0x40))), 0x40)
        }
    }

    /// @dev (x, y) + sum_i scalars[i] * P_(first + i) for the points P held in `ic`, in one
    /// assembly loop (the Solidity loop cost ~700 gas per term on top of the precompiles).
    function _msm(uint256 x, uint256 y, uint256[] memory ic, uint256 first, uint256[] calldata scalars)
        private
        view
        returns (bool ok, uint256, uint256)
    {
        assembly ("memory-safe") {
            let m := mload(0x40)
            ok := 1
            let p := add(add(ic, 0x20), mul(first, 0x40))
            let s := scalars.offset
            let end := add(s, mul(scalars.length, 0x20))
            for {} lt(s, end) { s := add(s, 0x20) } {
                mstore(m, mload(p))
                mstore(add(m, 0x20), mload(add(p, 0x20)))
                mstore(add(m, 0x40), calldataload(s))
                ok := and(ok, staticcall(EC_MUL_GAS, 0x07, m, 0x60, m, 0x40))
                mstore(add(m, 0x40), x)
                mstore(add(m, 0x60), y)
                ok := and(ok, staticcall(EC_ADD_GAS, 0x06, m, 0x80, m, 0x40))
                x := mload(m)
                y := mload(add(m, 0x20))
                p := add(p, 0x40)
            }
        }
        return (ok, x, y);
    }

    /// @dev (x, y) + s * (px, py) with the ecMul and ecAdd precompiles; ok stays false once false.
    function _mulAdd(bool ok, uint256 x, uint256 y, uint256 px, uint256 py, uint256 s)
        private
        view
        returns (bool, uint256, uint256)
    {
        assembly ("memory-safe") {
            let m := mload(0x40)
            mstore(m, px)
            mstore(add(m, 0x20), py)
            mstore(add(m, 0x40), s)
            ok := and(ok, staticcall(EC_MUL_GAS, 0x07, m, 0x60, m, 0x40))
            mstore(add(m, 0x40), x)
            mstore(add(m, 0x60), y)
            ok := and(ok, staticcall(EC_ADD_GAS, 0x06, m, 0x80, m, 0x40))
            x := mload(m)
            y := mload(add(m, 0x20))
        }
        return (ok, x, y);
    }

    /// @dev e(A, B) * e(-vk_x, gamma) * e(-C, delta) * e(-alpha, beta) == 1 (proof's G2
    /// coordinates swapped for EIP-197).
    function _pairing(uint256 vx, uint256 vy, uint256[8] calldata proof) private view returns (bool valid) {
        uint256[24] memory input;
        input[0] = proof[0];
        input[1] = proof[1];
        input[2] = proof[3];
        input[3] = proof[2];
        input[4] = proof[5];
        input[5] = proof[4];
        (input[6], input[7]) = _negate(vx, vy);
        (input[12], input[13]) = _negate(proof[6], proof[7]);
        address key = _key;
        assembly ("memory-safe") {
            extcodecopy(key, add(input, 0x100), add(1, GAMMA_OFFSET), 0x80) // gamma -> input[8..11]
            extcodecopy(key, add(input, 0x1c0), add(1, DELTA_OFFSET), 0x80) // delta -> input[14..17]
            extcodecopy(key, add(input, 0x240), 1, ALPHA_BETA_BYTES) // -alpha, beta -> input[18..23]
            let out := mload(0x40)
            let success := staticcall(PAIRING_4_GAS, 0x08, input, 0x300, out, 0x20)
            valid := and(success, eq(mload(out), 1))
        }
    }

    function _negate(uint256 x, uint256 y) private pure returns (uint256, uint256) {
        if (x == 0 && y == 0) return (0, 0);
        return (x, Q - (y % Q));
    }

    /// @dev SSTORE2: deploy `data` as the code of a contract that cannot be called (a leading STOP).
    function _storeCode(bytes memory data) private returns (address pointer) {
        // 600B5981380380925939F3: return all code after these 11 bytes.
        bytes memory creation = abi.encodePacked(hex"600B5981380380925939F3", hex"00", data);
        assembly ("memory-safe") {
            pointer := create(0, add(creation, 0x20), mload(creation))
        }
        if (pointer == address(0)) revert WaflVerifier__KeyStoreFailed();
    }
}
