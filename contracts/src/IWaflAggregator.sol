// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

/// @title WaFL aggregator: verified updates in, FedAvg global model out.
interface IWaflAggregator {
    /// @notice A round accepts updates until its deadline or until the quorum is reached.
    event RoundOpened(uint64 indexed round, uint64 deadline, uint256[] globalWords);
    event UpdateAccepted(uint64 indexed round, address indexed participant, uint32 accepted);
    /// @notice The round's accepted updates were averaged into the next round's global model
    /// (unchanged when no update was accepted).
    event RoundFinalized(uint64 indexed round, uint32 accepted);
    /// @notice A participant confirmed the verification key; `attested` of `registered` so far.
    event KeysAttested(address indexed participant, bytes32 keyHash, uint256 attested, uint256 registered);

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
}
