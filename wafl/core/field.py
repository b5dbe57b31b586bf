"""The BN254 scalar field that ZoKrates' Groth16 circuits compute in."""

SNARK_FIELD = 21888242871839275222246405745257275088548364400416034343698204186575808495617


def to_field(value: int) -> int:
    """Encode a signed integer as a field element (negative values wrap modulo p)."""
    return value % SNARK_FIELD

