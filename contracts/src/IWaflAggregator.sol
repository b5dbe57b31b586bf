// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

/// @title WaFL aggregator: verified updates in, FedAvg global model out.
/// @notice With secure aggregation (the verifier's setSize > 0) updates arrive masked by pairwise
/// masks that cancel only in the sum of the whole round's set: a round's set is fixed when it
/// opens, completes when every member has submitted, and is voided when one is missing.
interface IWaflAggregator {
    /// @notice A round accepts updates until its deadline or until the quorum is reached.
    event RoundOpened(uint64 indexed round, uint64 deadline, uint256[] globalWords);
    event UpdateAccepted(uint64 indexed round, address indexed participant, uint32 accepted);
    /// @notice The round's accepted updates were averaged into the next round's global model
    /// (unchanged when no update was accepted).
    event RoundFinalized(uint64 indexed round, uint32 accepted);
    /// @notice A participant confirmed the verification key; `attested` of `registered` so far.
    event KeysAttested(address indexed participant, bytes32 keyHash, uint256 attested, uint256 registered);
    /// @notice A participant's Baby Jubjub masking public key (secure aggregation).
    event MaskingKeyRegistered(address indexed participant, uint256 x, uint256 y);
    /// @notice The round's set, emitted just before its RoundOpened (secure aggregation): members in
    /// slot order, and the set's keys as the circuit takes them (2 * setSize words: slot 0 x, slot 0
    /// y, ...; an absent slot is the identity (0, 1)).
    event RoundMembers(uint64 indexed round, address[] members, uint256[] keys);
    /// @notice The round closed with members of its set missing, so its masks cannot cancel: the model
    /// is unchanged. The missing members are `excluded` from later sets (until they rejoin) when at
    /// least two members submitted.
    event RoundVoided(uint64 indexed round, address[] missing, bool excluded);
    /// @notice An excluded participant is back; `fromRound` is the first round whose set includes it.
    event MemberRejoined(address indexed participant, uint64 fromRound);

    error Wafl__NotParticipant(address account);
    error Wafl__RoundClosed(uint64 round, uint64 currentRound);
    error Wafl__DeadlinePassed(uint64 round, uint64 deadline);
    error Wafl__DeadlineNotReached(uint64 round, uint64 deadline);
    error Wafl__AlreadySubmitted(uint64 round, address participant);
    error Wafl__WrongWordCount(uint256 expected, uint256 given);
    error Wafl__LaneOutOfRange(uint256 wordIndex);
    error Wafl__InvalidProof();
    error Wafl__TooManyParticipants(uint256 maxParticipants);
    error Wafl__InvalidLayout(string reason);
    error Wafl__WrongKeyHash(bytes32 expected, bytes32 given);
    error Wafl__AlreadyAttested(address participant);
    error Wafl__NotAttested(address participant);
    /// @notice Round 1 has not opened: not every registered participant has attested the keys.
    error Wafl__KeysNotAttested(uint256 attested, uint256 registered);
    error Wafl__AlreadyStarted();
    /// @notice A secure-aggregation function called on an aggregator of plain updates.
    error Wafl__NotSecureAggregation();
    error Wafl__MaskingKeyAlreadySet(address participant);
    /// @notice Not a point of Baby Jubjub with canonical coordinates, or the identity or the point of
    /// order 2 (x = 0).
    error Wafl__InvalidMaskingKey(uint256 x, uint256 y);
    error Wafl__NoMaskingKey(address participant);
    error Wafl__NotInRoundSet(uint64 round, address participant);
    /// @notice A set of fewer than two members: a lone member's masked update would be its update.
    error Wafl__SetTooSmall(uint64 round, uint256 members);
    error Wafl__NotExcluded(address participant);

    struct Layout {
        uint32 nWeights;
        uint16 weightBits;
        uint16 slotBits;
        uint16 lanesPerWord;
        uint32 maxParticipants;
    }

    function submitUpdate(uint64 round, uint256[] calldata updateWords, uint256[8] calldata proof) external;

    function finalizeRound() external;

    function attestKeys(bytes32 keyHash) external;

    function openFirstRound() external;

    function verificationKeyHash() external view returns (bytes32);

    function hasAttested(address participant) external view returns (bool);

    function currentRound() external view returns (uint64 round, uint64 deadline, uint32 accepted);

    function globalModel() external view returns (uint256[] memory words);

    function hasSubmitted(address participant) external view returns (bool);

    function registerMaskingKey(uint256 x, uint256 y) external;

    function rejoin() external;

    function secureAggregation() external view returns (bool);

    function setSize() external view returns (uint256);

    /// @return members the registered participants, in registration order.
    function participants() external view returns (address[] memory members);

    /// @return members the current round's set, in slot order (empty for plain updates).
    function roundMembers() external view returns (address[] memory members);

    /// @return x the masking key's x coordinate (0, with y, when none is registered).
    /// @return y the masking key's y coordinate.
    function maskingKey(address participant) external view returns (uint256 x, uint256 y);

    function isExcluded(address participant) external view returns (bool);
}
