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
/// Secure aggregation (the verifier's setSize > 0, equal to maxParticipants): each participant
/// registers a Baby Jubjub masking key before attesting; a round's set (attested, keyed, not
/// excluded participants, in registration order) is fixed when the round opens and its keys enter
/// the round's share of the input sum. Members submit words masked by pairwise masks that cancel in
/// the sum of the whole set, so words are added modulo the scalar field order and the round
/// closes when every member has submitted (the quorum is ignored). A round that reaches its
/// deadline with members missing is voided (the model is kept) and, when at least two members
/// submitted, the missing ones are left out of later sets until they rejoin.
contract WaflAggregator is AccessControl, IWaflAggregator {
    bytes32 public constant PARTICIPANT_ROLE = keccak256("PARTICIPANT_ROLE");

    /// @dev Kept set in every sum slot so that adding an update is a non-zero to non-zero
    /// write (2,900 gas warm) instead of zero to non-zero (20,000) in each round.
    uint256 private constant SUM_SENTINEL = 1 << 255;
    /// @dev BN254 scalar field order: Baby Jubjub's base field, and the modulus of masked sums.
    uint256 private constant R = 21888242871839275222246405745257275088548364400416034343698204186575808495617;
    /// @dev Baby Jubjub (twisted Edwards): a x^2 + y^2 = 1 + d x^2 y^2 over the field of order R.
    uint256 private constant BABYJUBJUB_A = 168700;
    uint256 private constant BABYJUBJUB_D = 168696;

    IWaflVerifier public immutable verifier;
    bytes32 public immutable verificationKeyHash;
    uint256 public immutable nWeights;
    uint256 public immutable nWords;
    uint256 public immutable weightBits;
    uint256 public immutable slotBits;
    uint256 public immutable lanesPerWord;
    uint256 public immutable maxParticipants;
    /// @notice Updates that close a round early; ignored with secure aggregation (the whole set).
    uint32 public immutable quorum;
    uint64 public immutable roundDuration;
    /// @notice Masking-key slots of a round's set: 0 without secure aggregation.
    uint256 public immutable setSize;
    uint256 private immutable _payloadMask;
    uint256 private immutable _lastPayloadMask;

    struct RoundState {
        uint64 round;
        uint64 deadline;
        uint32 accepted;
        /// @dev Members of the round's set, and the set's version: it changes with the set, not
        /// with every round (secure aggregation; 0 otherwise).
        uint32 members;
        uint64 setVersion;
    }

    /// @dev One slot per participant, read once per submission.
    struct Member {
        /// @dev type(uint64).max from registration until the first submission, so that
        /// recording a submission never writes a zero slot.
        uint64 lastRound;
        bool attested;
        /// @dev Left out of every round's set until it rejoins.
        bool excluded;
        /// @dev The last version of the set it was in, and its slot there (secure aggregation): a
        /// round whose set is the previous round's writes nothing here.
        uint64 setVersion;
        uint32 slot;
    }

    RoundState private _state;
    uint256 public attestedCount;
    uint256[2] private _roundShare;
    mapping(uint256 word => uint256) private _global;
    mapping(uint256 word => uint256) private _sum;
    mapping(address participant => Member) private _members;
    /// @dev The registered participants in registration order (AccessControl does not enumerate),
    /// and 1 + each one's index there.
    address[] private _participants;
    mapping(address participant => uint256) private _position;
    mapping(address participant => uint256[2]) private _maskingKeys;
    /// @dev The current round's set, slots 0 .. _state.members - 1.
    mapping(uint256 slot => address) private _set;

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
        uint256 slots = verifier_.setSize();
        if (slots != 0 && slots != layout.maxParticipants) {
            revert Wafl__InvalidLayout("verifier's set size is not maxParticipants");
        }
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
        setSize = slots;
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
            uint256 count = _participants.length;
            if (count >= maxParticipants) revert Wafl__TooManyParticipants(maxParticipants);
            _participants.push(account);
            _position[account] = count + 1;
            if (_members[account].lastRound == 0) _members[account].lastRound = type(uint64).max;
        }
        granted = super._grantRole(role, account);
    }

    function _revokeRole(bytes32 role, address account) internal override returns (bool revoked) {
        revoked = super._revokeRole(role, account);
        if (revoked && role == PARTICIPANT_ROLE) {
            if (_members[account].attested) {
                _members[account].attested = false;
                attestedCount -= 1;
            }
            // Out of the list, the others keeping their order.
            uint256 last = _participants.length - 1;
            for (uint256 i = _position[account] - 1; i < last; ++i) {
                address next = _participants[i + 1];
                _participants[i] = next;
                _position[next] = i + 1;
            }
            _participants.pop();
            _position[account] = 0;
        }
    }

    /// @notice The number of registered participants.
    function participantCount() public view returns (uint256) {
        return _participants.length;
    }

    // ---- keys -----------------------------------------------------------------------------

    /// @notice A participant confirms the verification key (the ceremony's output it checked).
    /// The last attestation of the registered participants opens round 1. With secure
    /// aggregation, the participant's masking key must be registered first.
    function attestKeys(bytes32 keyHash) external {
        if (!hasRole(PARTICIPANT_ROLE, msg.sender)) revert Wafl__NotParticipant(msg.sender);
        if (keyHash != verificationKeyHash) revert Wafl__WrongKeyHash(verificationKeyHash, keyHash);
        Member storage member = _members[msg.sender];
        if (member.attested) revert Wafl__AlreadyAttested(msg.sender);
        if (setSize != 0 && _maskingKeys[msg.sender][0] == 0) revert Wafl__NoMaskingKey(msg.sender);
        member.attested = true;
        uint256 attested = attestedCount + 1;
        attestedCount = attested;
        uint256 registered = _participants.length;
        emit KeysAttested(msg.sender, keyHash, attested, registered);
        if (_state.round == 0 && attested == registered) {
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
        uint256 registered = _participants.length;
        if (registered == 0 || attestedCount < registered) revert Wafl__KeysNotAttested(attestedCount, registered);
    }

    /// @notice A participant's Baby Jubjub masking public key, once (secure aggregation). Refused:
    /// a point off the curve, coordinates at or above the field order, and x = 0 (the identity
    /// and the point of order 2, which would make every mask towards it public).
    function registerMaskingKey(uint256 x, uint256 y) external {
        if (!hasRole(PARTICIPANT_ROLE, msg.sender)) revert Wafl__NotParticipant(msg.sender);
        if (setSize == 0) revert Wafl__NotSecureAggregation();
        if (_maskingKeys[msg.sender][0] != 0) revert Wafl__MaskingKeyAlreadySet(msg.sender);
        if (!_onBabyJubjub(x, y)) revert Wafl__InvalidMaskingKey(x, y);
        _maskingKeys[msg.sender] = [x, y];
        emit MaskingKeyRegistered(msg.sender, x, y);
    }

    function _onBabyJubjub(uint256 x, uint256 y) private pure returns (bool) {
        if (x == 0 || x >= R || y >= R) return false;
        uint256 xx = mulmod(x, x, R);
        uint256 yy = mulmod(y, y, R);
        return addmod(mulmod(BABYJUBJUB_A, xx, R), yy, R)
            == addmod(1, mulmod(BABYJUBJUB_D, mulmod(xx, yy, R), R), R);
    }

    /// @notice An excluded participant asks to be back in the sets, from the next round's.
    function rejoin() external {
        if (!hasRole(PARTICIPANT_ROLE, msg.sender)) revert Wafl__NotParticipant(msg.sender);
        if (!_members[msg.sender].excluded) revert Wafl__NotExcluded(msg.sender);
        _members[msg.sender].excluded = false;
        emit MemberRejoined(msg.sender, _state.round + 1);
    }

    // ---- rounds ---------------------------------------------------------------------------

    function submitUpdate(uint64 round, uint256[] calldata updateWords, uint256[8] calldata proof) external {
        if (!hasRole(PARTICIPANT_ROLE, msg.sender)) revert Wafl__NotParticipant(msg.sender);
        RoundState memory state = _state;
        if (state.round == 0) _requireAllAttested();
        if (round != state.round) revert Wafl__RoundClosed(round, state.round);
        if (block.timestamp >= state.deadline) revert Wafl__DeadlinePassed(state.round, state.deadline);
        Member memory member = _members[msg.sender];
        uint256 words = nWords;
        uint256 needed;
        if (setSize == 0) {
            if (!member.attested) revert Wafl__NotAttested(msg.sender);
            if (member.lastRound == state.round) revert Wafl__AlreadySubmitted(state.round, msg.sender);
            if (updateWords.length != words) revert Wafl__WrongWordCount(words, updateWords.length);
            for (uint256 i = 0; i < words; ++i) {
                if (updateWords[i] & ~_payloadMaskOf(i, words) != 0) revert Wafl__LaneOutOfRange(i);
            }
            if (!verifier.verifyUpdate(_roundShare, updateWords, uint160(msg.sender), proof)) {
                revert Wafl__InvalidProof();
            }
            for (uint256 i = 0; i < words; ++i) {
                _sum[i] += updateWords[i];
            }
            needed = quorum;
        } else {
            // Masked words are field elements (the verifier refuses any at or above R): no lane check.
            if (member.setVersion != state.setVersion) revert Wafl__NotInRoundSet(state.round, msg.sender);
            // A member of the round's set was attested and not excluded when the set was fixed; a
            // participant revoked since then and registered again attests anew.
            if (!member.attested) revert Wafl__NotAttested(msg.sender);
            if (member.lastRound == state.round) revert Wafl__AlreadySubmitted(state.round, msg.sender);
            if (state.members < 2) revert Wafl__SetTooSmall(state.round, state.members);
            if (updateWords.length != words) revert Wafl__WrongWordCount(words, updateWords.length);
            if (!verifier.verifyUpdate(_roundShare, updateWords, member.slot, proof)) revert Wafl__InvalidProof();
            for (uint256 i = 0; i < words; ++i) {
                _sum[i] = addmod(_sum[i] & ~SUM_SENTINEL, updateWords[i], R) | SUM_SENTINEL;
            }
            needed = state.members;
        }
        // The one field that changes (attested was checked, the set's fields stay).
        _members[msg.sender].lastRound = state.round;
        state.accepted += 1;
        emit UpdateAccepted(state.round, msg.sender, state.accepted);
        if (state.accepted >= needed) {
            _finalize(state);
        } else {
            _state.accepted = state.accepted;
        }
    }

    /// @notice Anyone may close a round once its deadline has passed. With secure aggregation, a
    /// round whose set did not submit in full is voided.
    function finalizeRound() external {
        RoundState memory state = _state;
        if (state.round == 0) _requireAllAttested();
        if (block.timestamp < state.deadline) revert Wafl__DeadlineNotReached(state.round, state.deadline);
        if (setSize != 0 && state.accepted < state.members) {
            _void(state);
        } else {
            _finalize(state);
        }
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
            // With secure aggregation the sum is taken modulo R: once the whole set has submitted,
            // the masks have cancelled and it is the exact sum of the packed updates (< 2^253).
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

    /// @dev Secure aggregation, members missing at the deadline: the masks cannot cancel, so the
    /// round's sum is dropped and the model kept. The missing members are excluded from later sets
    /// when at least two members submitted (the next set then still has two).
    function _void(RoundState memory state) private {
        uint256 members = state.members;
        address[] memory missing = new address[](members - state.accepted);
        bool exclude = state.accepted >= 2;
        uint256 found = 0;
        for (uint256 i = 0; i < members; ++i) {
            address account = _set[i];
            if (_members[account].lastRound != state.round) {
                missing[found++] = account;
                if (exclude) _members[account].excluded = true;
            }
        }
        if (state.accepted != 0) {
            uint256 words = nWords;
            for (uint256 i = 0; i < words; ++i) {
                _sum[i] = SUM_SENTINEL;
            }
        }
        emit RoundVoided(state.round, missing, exclude);
        emit RoundFinalized(state.round, 0);
        _openRound(state.round + 1, globalModel());
    }

    function _openRound(uint64 round, uint256[] memory globalWords) private {
        uint64 deadline = uint64(block.timestamp) + roundDuration;
        if (setSize == 0) {
            _state = RoundState({round: round, deadline: deadline, accepted: 0, members: 0, setVersion: 0});
            _roundShare = verifier.roundShare(globalWords, round, new uint256[](0));
        } else {
            (address[] memory members, uint256[] memory keys, uint64 version) = _fixSet();
            _state = RoundState({
                round: round, deadline: deadline, accepted: 0, members: uint32(members.length), setVersion: version
            });
            _roundShare = verifier.roundShare(globalWords, round, keys);
            emit RoundMembers(round, members, keys);
        }
        emit RoundOpened(round, deadline, globalWords);
    }

    /// @dev The next round's set: every attested participant with a masking key that is not
    /// excluded, in registration order (at most setSize: there are no more participants than
    /// that). Returns its members, their keys as the circuit takes them (absent slots (0, 1)) and
    /// the set's version, a new one when the set is not the previous round's.
    function _fixSet() private returns (address[] memory members, uint256[] memory keys, uint64 version) {
        uint256 slots = setSize;
        uint256 registered = _participants.length;
        members = new address[](registered);
        keys = new uint256[](2 * slots);
        uint256 count = 0;
        for (uint256 i = 0; i < registered && count < slots; ++i) {
            address account = _participants[i];
            Member memory member = _members[account];
            if (!member.attested || member.excluded) continue;
            uint256 x = _maskingKeys[account][0];
            if (x == 0) continue;
            keys[2 * count] = x;
            keys[2 * count + 1] = _maskingKeys[account][1];
            members[count] = account;
            ++count;
        }
        for (uint256 k = count; k < slots; ++k) {
            keys[2 * k + 1] = 1;
        }
        assembly ("memory-safe") {
            mstore(members, count)
        }
        RoundState memory previous = _state;
        version = previous.setVersion;
        bool changed = version == 0 || count != previous.members;
        for (uint256 i = 0; i < count && !changed; ++i) {
            changed = _set[i] != members[i];
        }
        if (changed) {
            ++version;
            for (uint256 i = 0; i < count; ++i) {
                Member storage member = _members[members[i]];
                member.setVersion = version;
                member.slot = uint32(i);
                _set[i] = members[i];
            }
        }
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

    function secureAggregation() external view returns (bool) {
        return setSize != 0;
    }

    function participants() external view returns (address[] memory) {
        return _participants;
    }

    function roundMembers() external view returns (address[] memory members) {
        members = new address[](_state.members);
        for (uint256 i = 0; i < members.length; ++i) {
            members[i] = _set[i];
        }
    }

    function maskingKey(address participant) external view returns (uint256 x, uint256 y) {
        return (_maskingKeys[participant][0], _maskingKeys[participant][1]);
    }

    function isExcluded(address participant) external view returns (bool) {
        return _members[participant].excluded;
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
