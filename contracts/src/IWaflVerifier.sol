// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

/// @title Groth16 verification of a WaFL update, split by who pays for which public inputs.
/// @notice Public inputs are ordered (global words, round, update words, sender); with secure
/// aggregation (setSize > 0), (masked words, global words, round, set keys, index), the set keys
/// being 2 * setSize words (slot 0 x, slot 0 y, slot 1 x, ...). The global words, the round and
/// the set keys are the same for every update of a round, so their share of the input sum is
/// computed once per round; an update then costs one scalar multiplication per update word plus
/// one for its tag (the sender, or its slot in the round's set).
interface IWaflVerifier {
    error WaflVerifier__WrongInputCount(uint256 expected, uint256 given);
    /// @notice A public input at or above the scalar field order (index in the full input list).
    error WaflVerifier__InputNotInField(uint256 index);
    error WaflVerifier__BadPoint();
    error WaflVerifier__BadKey(uint256 words);
    error WaflVerifier__KeyStoreFailed();

    /// @return keccak256 of the packed verification key words the verifier was deployed with.
    function keyHash() external view returns (bytes32);

    /// @return The number of packed words of a model (global or update).
    function nWords() external view returns (uint256);

    /// @return The masking-key slots of a round's set (0: plain updates, no secure aggregation).
    function setSize() external view returns (uint256);

    /// @param setKeys the round's set's masking keys, 2 * setSize words (empty when setSize is 0).
    /// @return share IC_0 + sum(IC_i * globalWords_i) + IC_round * round + sum(IC_k * setKeys_k),
    /// as a G1 point.
    function roundShare(uint256[] calldata globalWords, uint256 round, uint256[] calldata setKeys)
        external
        view
        returns (uint256[2] memory share);

    /// @param tag uint160(sender) for a plain update; the sender's slot in the round's set for a
    /// masked one.
    /// @param proof a.x, a.y, b.x0, b.x1, b.y0, b.y1, c.x, c.y (each G2 coordinate real part first).
    /// @return True when the proof verifies for (share, updateWords, tag); false for any invalid
    /// proof, including points that are not on the curve.
    function verifyUpdate(
        uint256[2] calldata share,
        uint256[] calldata updateWords,
        uint256 tag,
        uint256[8] calldata proof
    ) external view returns (bool);
}
