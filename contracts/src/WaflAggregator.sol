// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {IWaflAggregator} from "./IWaflAggregator.sol";
import {IWaflVerifier} from "./IWaflVerifier.sol";

/// @title WaFL aggregator: accepts zkSNARK-verified updates and averages them (FedAvg).
/// @notice Weights travel as packed words: offset-binary lanes of `weightBits` bits, each in a
/// slot of `slotBits` bits whose zero headroom lets up to `maxParticipants` updates be added
/// word by word. The average of a lane is floor(laneSum / n), which equals the Python
/// reference's floor(sum(w) / n) once the offsets are taken out.
/// Keys: the aggregator records the hash of the verification key its verifier was deployed
/// with. Round 1 opens only once every registered participant has attested that hash (after
/// checking its own contribution in the ceremony's final key), and a participant registered
/// later attests before its first submission.
contract WaflAggregator is AccessControl, IWaflAggregator {
    bytes32 public constant PARTICIPANT_ROLE = keccak256("PARTICIPANT_ROLE");

    /// @dev Kept set in every sum slot so that adding an update is a non-zero to non-zero
    /// write (2,900 gas warm) instead of zero to non-zero (20,000) in each round.
    uint256 private constant SUM_SENTINEL = 1 << 255;

    IWaflVerifier public immutable verifier;
    bytes32 public immutable verificationKeyHash;
    uint256 public immutable nWeights;
    uint256 public immutable nWords;
    uint256 public immutable weightBits;
    uint256 public immutable slotBits;
    uint256 public immutable lanesPerWord;
    uint256 public immutable maxParticipants;
    uint32 public immutable quorum;
    uint64 public immutable roundDuration;
    uint256 private immutable _payloadMask;
    uint256 private immutable _lastPayloadMask;

    struct RoundState {
        uint64 round;
        uint64 deadline;
        uint32 accepted;
    }

    /// @dev One slot per participant, read once per submission.
    struct Member {
        /// @dev type(uint64).max from registration until the first submission, so that
        /// recording a submission never writes a zero slot.
        uint64 lastRound;
        bool attested;
    }

    RoundState private _state;
    uint256 public participantCount;
    uint256 public attestedCount;
    uint256[2] private _roundShare;
    mapping(uint256 word => uint256) private _global;
    mapping(uint256 word => uint256) private _sum;
    mapping(address participant => Member) private _members;

    constructor(
        IWaflVerifier verifier_,
        address admin,
        Layout memory layout,
        uint32 quorum_,
        uint64 roundDuration_,
        uint256[] memory initialGlobalWords
    ) {
        if (layout.lanesPerWord == 0 || uint256(layout.slotBits) * layout.lanesPerWord > 253) {
            revert Wafl__InvalidLayout("lanes exceed a field element");
        }
        if (layout.weightBits == 0 || layout.weightBits > layout.slotBits) revert Wafl__InvalidLayout("weight bits");
        if (uint256(layout.maxParticipants) > (uint256(1) << (layout.slotBits - layout.weightBits))) {
            revert Wafl__InvalidLayout("headroom too small for maxParticipants");
        }
        if (quorum_ == 0 || quorum_ > layout.maxParticipants) revert Wafl__InvalidLayout("quorum");
        if (roundDuration_ == 0) revert Wafl__InvalidLayout("round duration");
        uint256 words = (uint256(layout.nWeights) + layout.lanesPerWord - 1) / layout.lanesPerWord;
        if (words != verifier_.nWords()) revert Wafl__InvalidLayout("verifier has another word count");
        verifier = verifier_;
        verificationKeyHash = verifier_.keyHash();
        nWeights = layout.nWeights;
        nWords = words;
        weightBits = layout.weightBits;
        slotBits = layout.slotBits;
        lanesPerWord = layout.lanesPerWord;
        maxParticipants = layout.maxParticipants;
        quorum = quorum_;
        roundDuration = roundDuration_;
        _payloadMask = _mask(layout.lanesPerWord, layout.weightBits, layout.slotBits);
        uint256 lastLanes = uint256(layout.nWeights) - (words - 1) * layout.lanesPerWord;
        _lastPayloadMask = _mask(lastLanes, layout.weightBits, layout.slotBits);

        if (initialGlobalWords.length != words) revert Wafl__WrongWordCount(words, initialGlobalWords.length);
        for (uint256 i = 0; i < words; ++i) {
            if (initialGlobalWords[i] & ~_payloadMaskOf(i, words) != 0) revert Wafl__LaneOutOfRange(i);
            _global[i] = initialGlobalWords[i];
            _sum[i] = SUM_SENTINEL;
        }
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
    }

    // ---- participants ---------------------------------------------------------------------

    function registerParticipants(address[] calldata accounts) external onlyRole(DEFAULT_ADMIN_ROLE) {
        for (uint256 i = 0; i < accounts.length; ++i) {
            _grantRole(PARTICIPANT_ROLE, accounts[i]);
        }
    }

    function _grantRole(bytes32 role, address account) internal override returns (bool granted) {
        if (role == PARTICIPANT_ROLE && !hasRole(role, account)) {
            if (participantCount >= maxParticipants) revert Wafl__TooManyParticipants(maxParticipants);
            participantCount += 1;
            if (_members[account].lastRound == 0) _members[account].lastRound = type(uint64).max;
        }
        granted = super._grantRole(role, account);
    }

    function _revokeRole(bytes32 role, address account) internal override returns (bool revoked) {
        revoked = super._revokeRole(role, account);
        if (revoked && role == PARTICIPANT_ROLE) {
            participantCount -= 1;
            if (_members[account].attested) {
                _members[account].attested = false;
                attestedCount -= 1;
            }
        }
    }

    // ---- keys -----------------------------------------------------------------------------

    /// @notice A participant confirms the verification key (the ceremony's output it checked).
    /// The last attestation of the registered participants opens round 1.
    function attestKeys(bytes32 keyHash) external {
        if (!hasRole(PARTICIPANT_ROLE, msg.sender)) revert Wafl__NotParticipant(msg.sender);
        if (keyHash != verificationKeyHash) revert Wafl__WrongKeyHash(verificationKeyHash, keyHash);
        Member storage member = _members[msg.sender];
        if (member.attested) revert Wafl__AlreadyAttested(msg.sender);
        member.attested = true;
        uint256 attested = attestedCount + 1;
        attestedCount = attested;
        emit KeysAttested(msg.sender, keyHash, attested, participantCount);
        if (_state.round == 0 && attested == participantCount) {
            _openRound(1, globalModel());
        }
    }

    /// @notice Opens round 1 once every registered participant has attested the keys; for when
    /// the last attestation came before a revocation.
    function openFirstRound() external {
        if (_state.round != 0) revert Wafl__AlreadyStarted();
        _requireAllAttested();
        _openRound(1, globalModel());
    }

    function _requireAllAttested() private view {
        if (participantCount == 0 || attestedCount < participantCount) revert Wafl__KeysNotAttested(attestedCount, participantCount);
    }

    // ---- rounds ---------------------------------------------------------------------------

    function submitUpdate(uint64 round, uint256[] calldata updateWords, uint256[8] calldata proof) external {
        if (!hasRole(PARTICIPANT_ROLE, msg.sender)) revert Wafl__NotParticipant(msg.sender);
        RoundState memory state = _state;
        if (state.round == 0) _requireAllAttested();
        if (round != state.round) revert Wafl__RoundClosed(round, state.round);
        if (block.timestamp >= state.deadline) revert Wafl__DeadlinePassed(state.round, state.deadline);
        Member memory member = _members[msg.sender];
        if (!member.attested) revert Wafl__NotAttested(msg.sender);
        if (member.lastRound == state.round) revert Wafl__AlreadySubmitted(state.round, msg.sender);
        uint256 words = nWords;
        if (updateWords.length != words) revert Wafl__WrongWordCount(words, updateWords.length);
        for (uint256 i = 0; i < words; ++i) {
            if (updateWords[i] & ~_payloadMaskOf(i, words) != 0) revert Wafl__LaneOutOfRange(i);
        }
        if (!verifier.verifyUpdate(_roundShare, updateWords, msg.sender, proof)) revert Wafl__InvalidProof();

        for (uint256 i = 0; i < words; ++i) {
            _sum[i] += updateWords[i];
        }
        _members[msg.sender] = Member({lastRound: state.round, attested: true});
        state.accepted += 1;
        emit UpdateAccepted(state.round, msg.sender, state.accepted);
        if (state.accepted >= quorum) {
            _finalize(state);
        } else {
            _state = state;
        }
    }

    /// @notice Anyone may close a round once its deadline has passed.
    function finalizeRound() external {
        RoundState memory state = _state;
        if (state.round == 0) _requireAllAttested();
        if (block.timestamp < state.deadline) revert Wafl__DeadlineNotReached(state.round, state.deadline);
        _finalize(state);
    }

    function _finalize(RoundState memory state) private {
        uint256 words = nWords;
        uint256[] memory next = new uint256[](words);
        uint256 n = state.accepted;
        if (n == 0) {
            for (uint256 i = 0; i < words; ++i) {
                next[i] = _global[i];
            }
        } else {
            uint256 slot = slotBits;
            uint256 slotMask = (uint256(1) << slot) - 1;
            uint256 lanes = lanesPerWord;
            for (uint256 i = 0; i < words; ++i) {
                uint256 sum = _sum[i] & ~SUM_SENTINEL;
                uint256 averaged = 0;
                for (uint256 k = 0; k < lanes; ++k) {
                    uint256 shift = k * slot;
                    averaged |= (((sum >> shift) & slotMask) / n) << shift;
                }
                _sum[i] = SUM_SENTINEL;
                _global[i] = averaged;
                next[i] = averaged;
            }
        }
        emit RoundFinalized(state.round, state.accepted);
        _openRound(state.round + 1, next);
    }

    function _openRound(uint64 round, uint256[] memory globalWords) private {
        uint64 deadline = uint64(block.timestamp) + roundDuration;
        _state = RoundState({round: round, deadline: deadline, accepted: 0});
        uint256[2] memory share = verifier.roundShare(globalWords, round);
        _roundShare = share;
        emit RoundOpened(round, deadline, globalWords);
    }

    // ---- views ----------------------------------------------------------------------------

    function currentRound() external view returns (uint64 round, uint64 deadline, uint32 accepted) {
        RoundState memory state = _state;
        return (state.round, state.deadline, state.accepted);
    }

    function globalModel() public view returns (uint256[] memory words) {
        words = new uint256[](nWords);
        for (uint256 i = 0; i < words.length; ++i) {
            words[i] = _global[i];
        }
    }

    function hasSubmitted(address participant) external view returns (bool) {
        return _members[participant].lastRound == _state.round;
    }

    function hasAttested(address participant) external view returns (bool) {
        return _members[participant].attested;
    }

    function _payloadMaskOf(uint256 index, uint256 words) private view returns (uint256) {
        return index + 1 == words ? _lastPayloadMask : _payloadMask;
    }

    function _mask(uint256 lanes, uint256 bits, uint256 slot) private pure returns (uint256 mask) {
        uint256 lane = (uint256(1) << bits) - 1;
        for (uint256 k = 0; k < lanes; ++k) {
            mask |= lane << (k * slot);
        }
    }
}
