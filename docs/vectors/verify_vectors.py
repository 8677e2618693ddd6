#!/usr/bin/env python3
"""Independent check of the test vectors in docs/protocol.md.

Written from the text of docs/protocol.md only (not from the Rust code), with
standard primitives from `cryptography` (X25519, Ed25519, ChaCha20-Poly1305, and raw
ChaCha20 for the pads, filler and wrap layers of §7) and `blake3` (also its derive_key
mode for the layer keys of §7.1); HKDF and HMAC are spelled out from RFC 5869 / RFC 2104
with hashlib/hmac. The onion layers of §7 are protocol version 2 (fixed 1024-byte cells,
forward filler, backward wrap layers).
ML-KEM-768 (FIPS 203) for the hybrid handshake of §5.4 comes from `kyber-py`, a pure
Python implementation independent of the Rust `ml-kem` crate; its FIPS 203 internal
functions `_keygen_internal(d, z)` and `_encaps_internal(ek, m)` take the test seeds.

    pip install cryptography blake3 kyber-py
    python3 docs/vectors/verify_vectors.py

Exits 0 when every vector matches, 1 on any mismatch (each one is printed).
It also checks that every expected value below is printed in docs/protocol.md.
"""

import base64
import hashlib
import hmac
import os
import pathlib
import re
import struct
import sys

try:
    import blake3
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )
    from cryptography.hazmat.primitives.asymmetric.x25519 import (
        X25519PrivateKey,
        X25519PublicKey,
    )
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
    from kyber_py.ml_kem import ML_KEM_768
except ImportError as e:  # pragma: no cover
    sys.exit(f"missing module ({e}); run: pip install cryptography blake3 kyber-py")

FAILURES = []


def check(name, got, expected):
    if isinstance(got, (bytes, bytearray)):
        got = bytes(got).hex()
    if got == expected:
        print(f"ok    {name}")
    else:
        print(f"FAIL  {name}\n      got      {got}\n      expected {expected}")
        FAILURES.append(name)


def check_true(name, cond):
    check(name, "true" if cond else "false", "true")


# ---------------------------------------------------------------- §2 identities

def ed25519_public(seed: bytes) -> bytes:
    pk = Ed25519PrivateKey.from_private_bytes(seed).public_key()
    return pk.public_bytes(Encoding.Raw, PublicFormat.Raw)


def node_id(identity_public: bytes) -> bytes:
    # NodeId = BLAKE3-256(identity public key), plain unkeyed hash, 32 bytes.
    return blake3.blake3(identity_public).digest(length=32)


def x25519_public(secret: bytes) -> bytes:
    # Secrets are used as given; X25519 clamps them (RFC 7748 §5).
    pk = X25519PrivateKey.from_private_bytes(secret).public_key()
    return pk.public_bytes(Encoding.Raw, PublicFormat.Raw)


def x25519(secret: bytes, public: bytes) -> bytes:
    out = X25519PrivateKey.from_private_bytes(secret).exchange(
        X25519PublicKey.from_public_bytes(public)
    )
    if out == bytes(32):
        raise ValueError("non-contributory X25519 result")
    return out


# ---------------------------------------------------------------- §5 handshake

PROTOID = b"anonnet-ntor-x25519-sha256-1"


def hmac_sha256(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


def hkdf_sha256(salt: bytes, ikm: bytes, info: bytes, length: int) -> bytes:
    prk = hmac_sha256(salt, ikm)  # HKDF-Extract (RFC 5869 §2.2)
    okm, t, i = b"", b"", 1  # HKDF-Expand (RFC 5869 §2.3)
    while len(okm) < length:
        t = hmac_sha256(prk, t + info + bytes([i]))
        okm += t
        i += 1
    return okm[:length]


def derive(exp_xy, exp_xb, nid, B, X, Y, protoid=PROTOID):
    secret_input = exp_xy + exp_xb + nid + B + X + Y + protoid
    assert len(secret_input) == 192 + len(protoid)  # 220 with the relay PROTOID
    okm = hkdf_sha256(protoid + b":extract", secret_input, protoid + b":expand", 96)
    auth_key, kf, kb = okm[0:32], okm[32:64], okm[64:96]
    auth = hmac_sha256(auth_key, nid + B + Y + X + protoid + b"Server")
    # The note of §5.2: zero-padding the key to the 64-byte block gives the same HMAC.
    assert auth == hmac_sha256(auth_key + bytes(32), nid + B + Y + X + protoid + b"Server")
    return auth, kf, kb


def handshake_vector():
    identity_seed, b, x, y = b"\x11" * 32, b"\x22" * 32, b"\x33" * 32, b"\x44" * 32
    nid = node_id(ed25519_public(identity_seed))
    B, X, Y = x25519_public(b), x25519_public(x), x25519_public(y)
    # Client side: X25519(x, Y), X25519(x, B).
    c_auth, c_kf, c_kb = derive(x25519(x, Y), x25519(x, B), nid, B, X, Y)
    # Relay side: X25519(y, X), X25519(b, X).
    r_auth, r_kf, r_kb = derive(x25519(y, X), x25519(b, X), nid, B, X, Y)
    check_true("§5.3 client and relay derive the same AUTH, Kf, Kb",
               (c_auth, c_kf, c_kb) == (r_auth, r_kf, r_kb))
    expected = HANDSHAKE
    for name, got in zip(
        ["NODE_ID", "B", "X", "Y", "AUTH", "Kf", "Kb"],
        [nid, B, X, Y, c_auth, c_kf, c_kb],
    ):
        check(f"§5.3 {name}", got, expected[name])
    # A small-order X (all zeros) must be refused as non-contributory.
    try:
        x25519(b, bytes(32))
        check_true("§5.2 non-contributory X refused", False)
    except ValueError:
        check_true("§5.2 non-contributory X refused", True)


# ---------------------------------------------------------------- §5.4 hybrid handshake

PROTOID_HYBRID = b"anonnet-hybrid-x25519-mlkem768-sha256-2"
EK_LEN, CT_LEN = 1184, 1088  # ML-KEM-768 (FIPS 203, k = 3, du = 10, dv = 4)


def derive_hybrid(exp_xy, exp_xb, ss, nid, B, X, Y, ek, ct):
    h_ek, h_ct = hashlib.sha256(ek).digest(), hashlib.sha256(ct).digest()
    p = PROTOID_HYBRID
    secret_input = exp_xy + exp_xb + ss + nid + B + X + Y + h_ek + h_ct + p
    assert len(p) == 39 and len(secret_input) == 327
    okm = hkdf_sha256(p + b":extract", secret_input, p + b":expand", 96)
    auth_key, kf, kb = okm[0:32], okm[32:64], okm[64:96]
    auth = hmac_sha256(auth_key, nid + B + Y + X + h_ek + h_ct + p + b"Server")
    return auth, kf, kb


def hybrid_vector():
    identity_seed, b, x, y = b"\x11" * 32, b"\x22" * 32, b"\x33" * 32, b"\x44" * 32
    kem_seed, m = b"\x55" * 64, b"\x66" * 32
    nid = node_id(ed25519_public(identity_seed))
    B, X, Y = x25519_public(b), x25519_public(x), x25519_public(y)
    # Client: ML-KEM.KeyGen_internal(d, z) with d ‖ z = kem_seed (FIPS 203 §6.1).
    ek, dk = ML_KEM_768._keygen_internal(kem_seed[:32], kem_seed[32:])
    check_true("§5.4 EK is 1184 bytes", len(ek) == EK_LEN)
    hello = nid + B + X + ek
    check_true("§5.4 hello is 1280 bytes", len(hello) == 1280)
    # Relay: ML-KEM.Encaps_internal(ek, m) (FIPS 203 §6.2).
    ss, ct = ML_KEM_768._encaps_internal(ek, m)
    check_true("§5.4 CT is 1088 bytes", len(ct) == CT_LEN)
    r_auth, r_kf, r_kb = derive_hybrid(x25519(y, X), x25519(b, X), ss, nid, B, X, Y, ek, ct)
    reply = Y + ct + r_auth
    check_true("§5.4 reply is 1152 bytes", len(reply) == 1152)
    # Client: parse the reply, decapsulate, derive, compare AUTH.
    c_y, c_ct, c_auth_rx = reply[:32], reply[32:32 + CT_LEN], reply[32 + CT_LEN:]
    c_ss = ML_KEM_768.decaps(dk, c_ct)
    c_auth, c_kf, c_kb = derive_hybrid(x25519(x, c_y), x25519(x, B), c_ss,
                                       nid, B, X, c_y, ek, c_ct)
    check_true("§5.4 client and relay derive the same SS, AUTH, Kf, Kb",
               (c_ss, c_auth, c_kf, c_kb) == (ss, r_auth, r_kf, r_kb)
               and hmac.compare_digest(c_auth, c_auth_rx))
    # A corrupted CT decapsulates to another secret (implicit rejection): AUTH fails.
    bad_ct = ct[:100] + bytes([ct[100] ^ 1]) + ct[101:]
    bad_ss = ML_KEM_768.decaps(dk, bad_ct)
    bad_auth, _, _ = derive_hybrid(x25519(x, Y), x25519(x, B), bad_ss, nid, B, X, Y, ek, bad_ct)
    check_true("§5.4 a corrupted CT fails AUTH", bad_ss != ss and bad_auth != r_auth)
    expected = HYBRID
    for name, got in zip(
        ["X", "SHA256(EK)", "BLAKE3(hello)", "Y", "SHA256(CT)", "SS", "AUTH",
         "BLAKE3(reply)", "Kf", "Kb"],
        [X, hashlib.sha256(ek).digest(), blake3.blake3(hello).digest(), Y,
         hashlib.sha256(ct).digest(), ss, c_auth, blake3.blake3(reply).digest(), c_kf, c_kb],
    ):
        check(f"§5.4 {name}", got, expected[name])


HYBRID = {
    "X": "7b0d47d93427f8311160781c7c733fd89f88970aef490d8aa0ee19a4cb8a1b14",
    "SHA256(EK)": "bd38559a78dc6960bd9edeb1c689a0ec80ba99f2ce5486f7921a4d3d4d213cd0",
    "BLAKE3(hello)": "e4ae497bd000aaa251f30db685a8bfd85eaf830d71116044c11a2e3285344eac",
    "Y": "ff2ee45601ec1b67310c7790404585ae697331eee1c1f8cf2419731c1fff3e6b",
    "SHA256(CT)": "3f860aa85069aa8b22a6c44a75eb2047274ee5106e6fc72c538cf4faa20720a6",
    "SS": "d2e9d0f741e00b984bdeac447881f70775d741fe835d6b239ac80bd4d0b02bb3",
    "AUTH": "5667c3b7fc4c7e9d2e9aa849bdb52b48035ba9eef1753e767cf1cac20f34050d",
    "BLAKE3(reply)": "cb5610aabb29bfc908027874205966e06145574fe621dbed0b903042fd786ff6",
    "Kf": "dfd736337e5558e78ee3fb2538f1a6064b476c8f71d320172ab92107db2273b0",
    "Kb": "57d27d0b6a2416e458b69c1f1b20abee6969bde9485f8eb2ee80709c1f210db9",
}


# ---------------------------------------------------------------- §5.5 hidden-service PROTOID

HS_PROTOID = b"anonnet-hs-ntor-x25519-sha256-1"


def hs_ntor_vector():
    identity_seed, b, x, y = b"\x11" * 32, b"\x22" * 32, b"\x33" * 32, b"\x44" * 32
    nid = node_id(ed25519_public(identity_seed))
    B, X, Y = x25519_public(b), x25519_public(x), x25519_public(y)
    c = derive(x25519(x, Y), x25519(x, B), nid, B, X, Y, HS_PROTOID)
    r = derive(x25519(y, X), x25519(b, X), nid, B, X, Y, HS_PROTOID)
    check_true("§5.5 client and service derive the same AUTH, Kf, Kb", c == r)
    for name, got in zip(["AUTH", "Kf", "Kb"], c):
        check(f"§5.5 {name}", got, HS_NTOR[name])
    # A relay-PROTOID client never accepts a hidden-service answer, nor the other way round.
    relay = derive(x25519(x, Y), x25519(x, B), nid, B, X, Y)
    check_true("§5.5 relay and hidden-service transcripts differ", relay[0] != c[0])


HS_NTOR = {
    "AUTH": "2137cd7e5b33c362e6351a13ec8f90bd12f1c4e0cabc3164af57348758995bbf",
    "Kf": "8cbcd44fce73c16a89c3c7b58890567c98c75ad423638528db5d5999cc0c39cb",
    "Kb": "65cb053dbdcd8c9a1521a7f37987ef299639fd575b9fdc2135c3e28b5beee58e",
}


HANDSHAKE = {
    "NODE_ID": "4a78877c4a0926fc5d5cb282bb45c11c8489b202fe1890fa0c6593e6192b9f75",
    "B": "0faa684ed28867b97f4a6a2dee5df8ce974e76b7018e3f22a1c4cf2678570f20",
    "X": "7b0d47d93427f8311160781c7c733fd89f88970aef490d8aa0ee19a4cb8a1b14",
    "Y": "ff2ee45601ec1b67310c7790404585ae697331eee1c1f8cf2419731c1fff3e6b",
    "AUTH": "392d5208cd14de179610df8fddb2336c9513176f2d1e0349738ac0d36175c7c4",
    "Kf": "a7889429bd08d5fefc8ceed501b97de0336b69d3fdfaf57b040009fcbfcbb0ec",
    "Kb": "5a3aa3d199a8aa5b4d6a1734537e1e3ef83f42054dfa57b432ab6c78eb96247a",
}

# ---------------------------------------------------------------- §7 onion layers (version 2)

CELL_LEN = 1024
LAYER = 25  # seq (8) + tag (16) + kind (1): LAYER_OVERHEAD of §4.1
REGION = CELL_LEN - 1  # a sealed layer: seq ‖ tag ‖ body, the 1023 bytes after the command
BODY = REGION - 24  # 999: kind ‖ inner
AREA = BODY - 1  # 998: MESSAGE_AREA of §6.1
MAX_LAYERS, MIN_PADDING = 8, 16
FORWARD_MESSAGE_MAX = AREA - LAYER * (MAX_LAYERS - 1) - MIN_PADDING  # 807
BACKWARD_MESSAGE_MAX = AREA - MIN_PADDING  # 982
RELAY, FORWARD, DELIVER = 0x03, 1, 2

CTX_FWD = "anonnet v2 2026-12 forward layer key"
CTX_PAD = "anonnet v2 2026-12 forward pad key"
CTX_BWD = "anonnet v2 2026-12 backward layer key"
CTX_WRAP = "anonnet v2 2026-12 backward wrap key"


def layer_keys(kf: bytes, kb: bytes) -> dict:
    """§7.1: the hop's four layer keys, BLAKE3 derive_key(context, key material)."""
    dk = lambda ctx, km: blake3.blake3(km, derive_key_context=ctx).digest()  # noqa: E731
    return {"fwd": dk(CTX_FWD, kf), "pad": dk(CTX_PAD, kf),
            "bwd": dk(CTX_BWD, kb), "wrap": dk(CTX_WRAP, kb)}


def nonce(n: int) -> bytes:
    return b"\x00\x00\x00\x00" + struct.pack(">Q", n)


def chacha20(key: bytes, n: int, length: int, counter: int = 0) -> bytes:
    """RFC 8439 §2.4 keystream; `cryptography` takes counter (4 bytes LE) ‖ nonce (12)."""
    full_nonce = struct.pack("<I", counter) + nonce(n)
    enc = Cipher(algorithms.ChaCha20(key, full_nonce), mode=None).encryptor()
    return enc.update(bytes(length)) + enc.finalize()


def xor(a: bytes, b: bytes) -> bytes:
    assert len(a) <= len(b)
    return bytes(x ^ y for x, y in zip(a, b))


def body_keystream(k_fwd: bytes, seq: int) -> bytes:
    """KS of §7.2: what ChaCha20-Poly1305 XORs onto the 999 body bytes (counter from 1)."""
    return chacha20(k_fwd, seq, BODY, counter=1)


def pad(k_pad: bytes, seq: int) -> bytes:
    """§7.1: a hop's 25-byte pad for its forward seq."""
    return chacha20(k_pad, seq, LAYER)


def wrap(region: bytes, k_wrap: bytes, w: int) -> bytes:
    """§7.1: XOR the 1023 bytes after the command byte with ChaCha20(K_wrap, w)."""
    assert len(region) == REGION
    return xor(region, chacha20(k_wrap, w, REGION))


def seal(body: bytes, key: bytes, seq: int) -> bytes:
    """§7.1: seq ‖ tag ‖ ChaCha20-Poly1305(key, nonce(seq), body, AAD empty)."""
    assert len(body) == BODY
    ct = ChaCha20Poly1305(key).encrypt(nonce(seq), bytes(body), b"")
    return struct.pack(">Q", seq) + ct[-16:] + ct[:-16]


def open_sealed(region: bytes, key: bytes, expected_seq: int) -> bytes:
    """§7.1/§7.3: sequence check before decrypting, then decrypt and check the tag."""
    (seq,) = struct.unpack(">Q", region[:8])
    if seq != expected_seq:
        raise ValueError(f"sequence {seq}, expected {expected_seq}")
    try:
        return ChaCha20Poly1305(key).decrypt(nonce(seq), bytes(region[24:] + region[8:24]), b"")
    except InvalidTag:
        raise ValueError("bad tag") from None


def random_fill(n: int) -> bytes:
    return os.urandom(n)


class FwdLayer:
    """A sender's forward layer of one hop: seals with `seal_key`; a relay hop's pads come
    from `pad_key`; the end-to-end hop (§13.5) also wraps its sealed region with `wrap_key`."""

    def __init__(self, seal_key, pad_key=None, wrap_key=None):
        self.seal_key, self.pad_key, self.wrap_key = seal_key, pad_key, wrap_key
        self.seq = self.w = 0


class BwdLayer:
    """A receiver's backward layer of one hop: unwraps with `wrap_key`, opens with `open_key`."""

    def __init__(self, wrap_key, open_key):
        self.wrap_key, self.open_key = wrap_key, open_key
        self.seq = self.w = 0


class Endpoint:
    """The client (or, for a rendezvous circuit, the service): §7.2 and §7.3 "Client"."""

    def __init__(self, fwd, bwd):
        self.fwd, self.bwd = fwd, bwd

    @classmethod
    def client(cls, hop_keys):
        keys = [layer_keys(kf, kb) for kf, kb in hop_keys]
        return cls([FwdLayer(k["fwd"], k["pad"]) for k in keys],
                   [BwdLayer(k["wrap"], k["bwd"]) for k in keys])

    def add_end_to_end(self, kf, kb, client_side: bool):
        """§13.5: the client seals with K_fwd and wraps with K_pad, the service seals with
        K_bwd and wraps with K_wrap; each opens and unwraps with the other's pair."""
        k = layer_keys(kf, kb)
        mine, theirs = (("fwd", "pad"), ("bwd", "wrap"))[:: 1 if client_side else -1]
        self.fwd.append(FwdLayer(k[mine[0]], wrap_key=k[mine[1]]))
        self.bwd.append(BwdLayer(k[theirs[1]], k[theirs[0]]))

    def seal_forward(self, msg: bytes, t: int, fill=random_fill) -> bytes:
        """§7.2 steps 1-5."""
        if len(msg) > FORWARD_MESSAGE_MAX:
            raise ValueError("message too long")
        hops = self.fwd
        # 1. Filler: F_{h+1} = (F_h ⊕ KS_h[999 − 25h .. 999]) ‖ pad_h(s_h).
        filler = b""
        for h in range(t):
            ks = body_keystream(hops[h].seal_key, hops[h].seq)
            filler = xor(filler, ks[BODY - LAYER * h:]) + pad(hops[h].pad_key, hops[h].seq)
        assert len(filler) == LAYER * t
        # 2. Buffer of 1024 + 25t bytes; hop t's area is B[26 + 25t .. 1024 + 25t].
        buf = bytearray(CELL_LEN + LAYER * t)
        area = 26 + LAYER * t
        room = AREA - LAYER * t  # message and padding; the filler takes the rest
        buf[area:area + len(msg)] = msg
        buf[area + len(msg):area + room] = fill(room - len(msg))
        # 3. Innermost tail: its ciphertext (after the wrap, for the end-to-end hop) is F_t.
        last = hops[t]
        tail = xor(filler, body_keystream(last.seal_key, last.seq)[BODY - LAYER * t:])
        if last.wrap_key is not None:
            tail = xor(tail, chacha20(last.wrap_key, last.w, REGION)[REGION - LAYER * t:])
        buf[area + room:] = tail
        # 4. Seal from hop t down to hop 0.
        for h in range(t, -1, -1):
            off = 1 + LAYER * h
            buf[off + 24] = DELIVER if h == t else FORWARD
            region = seal(buf[off + 24:off + REGION], hops[h].seal_key, hops[h].seq)
            hops[h].seq += 1
            if hops[h].wrap_key is not None:
                region = wrap(region, hops[h].wrap_key, hops[h].w)
                hops[h].w += 1
            buf[off:off + REGION] = region
            if h == t and bytes(buf[CELL_LEN:]) != filler:
                raise ValueError("hop t's sealed region does not end in F_t")
        # 5. The cell.
        return bytes([RELAY]) + bytes(buf[1:CELL_LEN])

    def open_backward(self, cell: bytes):
        """§7.3 "Client, backward": returns (hop, message area)."""
        if len(cell) != CELL_LEN or cell[0] != RELAY:
            raise ValueError("not a 1024-byte RELAY cell")
        region = cell[1:]
        for h, hop in enumerate(self.bwd):
            region = wrap(region, hop.wrap_key, hop.w)
            hop.w += 1
            if region[:8] == struct.pack(">Q", hop.seq):
                body = open_sealed(region, hop.open_key, hop.seq)
                hop.seq += 1
                if body[0] != DELIVER:
                    raise ValueError("bad kind")
                return h, body[1:]
        raise ValueError("no hop recognises the cell")


class RelayHop:
    """§7.3 for one relay on one circuit."""

    def __init__(self, kf, kb):
        self.k = layer_keys(kf, kb)
        self.fseq = self.bseq = self.w = 0

    def forward(self, cell: bytes):
        """Returns ("FORWARD", next leg's cell) or ("DELIVER", message area)."""
        if len(cell) != CELL_LEN or cell[0] != RELAY:
            raise ValueError("not a 1024-byte RELAY cell")
        seq = self.fseq
        body = open_sealed(cell[1:], self.k["fwd"], seq)
        self.fseq += 1
        if body[0] == FORWARD:
            return "FORWARD", bytes([RELAY]) + body[1:] + pad(self.k["pad"], seq)
        if body[0] == DELIVER:
            return "DELIVER", body[1:]
        raise ValueError("bad kind")

    def wrap(self, cell: bytes) -> bytes:
        """Backward, passing on (and the last step of originating)."""
        if len(cell) != CELL_LEN or cell[0] != RELAY:
            raise ValueError("not a 1024-byte RELAY cell")
        out = bytes([RELAY]) + wrap(cell[1:], self.k["wrap"], self.w)
        self.w += 1
        return out

    def originate(self, msg: bytes, fill=random_fill) -> bytes:
        if len(msg) > BACKWARD_MESSAGE_MAX:
            raise ValueError("message too long")
        body = bytes([DELIVER]) + msg + fill(AREA - len(msg))
        region = seal(body, self.k["bwd"], self.bseq)
        self.bseq += 1
        return self.wrap(bytes([RELAY]) + region)


def vector_keys():
    return [(bytes([i]) * 32, bytes([i + 100]) * 32) for i in (1, 2, 3)]


def fill_aa(n: int) -> bytes:
    return b"\xaa" * n


MSG_DATA_HI = bytes.fromhex("02000100026869")  # DATA "hi" on stream 1

ONION_FWD_PREFIX = (
    "030000000000000000c5cfcf3abdc376c976ee1ff2624ad34e57c4f789c8a23b"
    "5ebcaaa362001529819eea129d163838"
)
ONION_FWD_BLAKE3 = "152778b24d74bf67a5c92fe19d97d92cd283b86d48985fddfced13d8fe65dd15"
ONION_BWD_PREFIX = (
    "03af2f0f73770dc02d23bf0e0ad2e6a2a6c879c1f3c263105a8af7aa5d19b1d3"
    "6e554c410447ada60f91df7ea1f5c192"
)
ONION_BWD_BLAKE3 = "54bf1301c22e4e2e4bac879b17d106352b39c85268edfd295587d0ebf1c24e08"


def expect_error(name, fn, word=None):
    try:
        fn()
        check_true(name, False)
    except ValueError as e:
        check_true(name, word is None or word in str(e))


def attempt(fn):
    """fn() or None if it raises ValueError: a self-check then prints FAIL, not a traceback."""
    try:
        return fn()
    except ValueError as e:
        print(f"      ({e})")
        return None


def forward_through(relays, cell):
    """Carries a forward cell hop by hop; returns (hop, message area) or None."""
    for h, r in enumerate(relays):
        if len(cell) != CELL_LEN:
            return None
        kind, out = r.forward(cell)
        if kind == "DELIVER":
            return h, out
        cell = out
    return None


def onion_vectors():
    keys = vector_keys()
    # §6.1 sizes.
    check_true("§6.1 FORWARD_MESSAGE_MAX 807, BACKWARD_MESSAGE_MAX 982 (DATA 802, 977)",
               (FORWARD_MESSAGE_MAX, BACKWARD_MESSAGE_MAX,
                FORWARD_MESSAGE_MAX - 5, BACKWARD_MESSAGE_MAX - 5) == (807, 982, 802, 977))
    # §7.2's KS is the AEAD's own keystream: ChaCha20 from block counter 1 (RFC 8439 §2.8).
    k = layer_keys(*keys[0])["fwd"]
    check_true("§7.2 KS_h is ChaCha20 from block counter 1",
               ChaCha20Poly1305(k).encrypt(nonce(5), bytes(BODY), b"")[:-16]
               == body_keystream(k, 5))

    # §7.4 forward: the client's first cell to hop index 2, 0xAA padding.
    cell = attempt(lambda: Endpoint.client(keys).seal_forward(MSG_DATA_HI, 2, fill_aa)) or b""
    check_true("§7.4 forward cell is 1024 bytes", len(cell) == CELL_LEN)
    check("§7.4 forward C[0..48]", cell[:48], ONION_FWD_PREFIX)
    check("§7.4 forward BLAKE3(C)", blake3.blake3(cell).hexdigest(), ONION_FWD_BLAKE3)

    # Python relays open it hop by hop (open, re-pad, next hop): every leg 1024 bytes,
    # hop 2 gets the message, its 0xAA padding, then the 50 bytes of filler.
    relays = [RelayHop(kf, kb) for kf, kb in keys]
    c, got, sizes = cell, None, []
    for h, r in enumerate(relays):
        sizes.append(len(c))
        kind, out = attempt(lambda: r.forward(c)) or (None, None)
        if kind != "FORWARD":
            got = (h, out) if kind == "DELIVER" else None
            break
        c = out
    check_true("§4.1 every leg's cell is 1024 bytes", sizes == [CELL_LEN] * 3)
    n = len(MSG_DATA_HI)
    check_true("§7.3 forward vector opens hop by hop and reaches hop 2 with the message",
               got is not None and got[0] == 2 and len(got[1]) == AREA
               and got[1][:n] == MSG_DATA_HI and got[1][n:AREA - 50] == fill_aa(AREA - 50 - n))

    # The same with random padding, to every hop, over several cells (seq and pads advance).
    cl, relays = Endpoint.client(keys), [RelayHop(kf, kb) for kf, kb in keys]
    ok = True
    for i, t in enumerate([2, 0, 1, 2, 2, 1, 0, 2]):
        msg = relay_msg(2, 1, bytes([i]) * (FORWARD_MESSAGE_MAX - 5))  # the largest DATA
        got = attempt(lambda: forward_through(relays, cl.seal_forward(msg, t)))
        ok = ok and got is not None and got[0] == t and got[1][:len(msg)] == msg
    check_true("§7.2 random-padded cells of the largest size open at hops 0, 1, 2 in turn", ok)
    expect_error("§7.2 a message over FORWARD_MESSAGE_MAX is refused",
                 lambda: Endpoint.client(keys).seal_forward(bytes(FORWARD_MESSAGE_MAX + 1), 0))

    # §7.4 backward: hop 2 originates (seq 0, wrap 0), hops 1 and 0 wrap (wrap 0).
    relays = [RelayHop(kf, kb) for kf, kb in keys]
    c = relays[2].originate(MSG_DATA_HI, fill_aa)
    c = relays[1].wrap(c)
    c = relays[0].wrap(c)
    check_true("§7.4 backward cell is 1024 bytes", len(c) == CELL_LEN)
    check("§7.4 backward C[0..48]", c[:48], ONION_BWD_PREFIX)
    check("§7.4 backward BLAKE3(C)", blake3.blake3(c).hexdigest(), ONION_BWD_BLAKE3)
    hop, msg = attempt(lambda: Endpoint.client(keys).open_backward(c)) or (None, b"")
    check_true("§7.3 client opens the backward vector as hop 2's message",
               hop == 2 and msg[:n] == MSG_DATA_HI and msg[n:] == fill_aa(AREA - n))

    # Backward from every hop in turn: each hop wraps every cell it passes, the client
    # unwraps hop by hop until it recognises the seq.
    cl, relays = Endpoint.client(keys), [RelayHop(kf, kb) for kf, kb in keys]
    ok = True
    for i, origin in enumerate([2, 0, 1, 2, 0, 2]):
        msg = relay_msg(2, 1, bytes([i]) * (BACKWARD_MESSAGE_MAX - 5))
        c = relays[origin].originate(msg)
        for h in range(origin - 1, -1, -1):
            c = relays[h].wrap(c)
        hop, area = attempt(lambda: cl.open_backward(c)) or (None, b"")
        ok = ok and hop == origin and area[:len(msg)] == msg
    check_true("§7.3 backward cells from hops 2, 0, 1, … are recognised in turn", ok)

    for name, fn in [("§7.3 tamper checks", tamper_checks),
                     ("§13.5 end-to-end check", end_to_end_check)]:
        try:
            fn(keys)
        except (ValueError, IndexError) as e:  # the set-up itself failed
            check_true(f"{name} ran ({type(e).__name__}: {e})", False)


def tamper_checks(keys):
    # §7.3 tamper detection, forward: caught at the very next hop.
    def fresh():
        return Endpoint.client(keys), [RelayHop(kf, kb) for kf, kb in keys]

    for name, pos in [("a flipped bit in the next layer", 500),
                      ("a flipped bit in the guard's pad", CELL_LEN - 1)]:
        cl, rs = fresh()
        _, to_middle = rs[0].forward(cl.seal_forward(MSG_DATA_HI, 2))
        bad = bytearray(to_middle)
        bad[pos] ^= 1
        expect_error(f"§7.3 {name} is rejected by the next hop", lambda: rs[1].forward(bytes(bad)),
                     "tag")
    cl, rs = fresh()
    _, to_middle = rs[0].forward(cl.seal_forward(MSG_DATA_HI, 2))
    _, to_exit = rs[1].forward(to_middle)
    bad = bytearray(to_exit)
    bad[-30] ^= 1  # in the filler the middle's pad and the guard's pad made
    expect_error("§7.3 a flipped bit in the filler is rejected by hop 2",
                 lambda: rs[2].forward(bytes(bad)), "tag")
    cl, rs = fresh()
    _, to_middle = rs[0].forward(cl.seal_forward(MSG_DATA_HI, 2))
    rs[1].forward(to_middle)
    expect_error("§7.1 replayed cell rejected", lambda: rs[1].forward(to_middle), "sequence")
    cl, rs = fresh()
    cl.seal_forward(MSG_DATA_HI, 2)
    c1 = cl.seal_forward(MSG_DATA_HI, 2)
    expect_error("§7.1 skipped cell rejected", lambda: rs[0].forward(c1), "sequence")

    # Backward: a flipped bit or a dropped cell makes the client fail at once.
    cl, rs = fresh()
    c = bytearray(rs[0].wrap(rs[1].wrap(rs[2].originate(MSG_DATA_HI))))
    c[700] ^= 1
    expect_error("§7.3 a flipped bit backward is rejected by the client",
                 lambda: cl.open_backward(bytes(c)))
    cl, rs = fresh()
    rs[0].wrap(rs[1].wrap(rs[2].originate(MSG_DATA_HI)))  # dropped by the guard
    c = rs[0].wrap(rs[1].wrap(rs[2].originate(MSG_DATA_HI)))
    expect_error("§7.3 a dropped backward cell is detected at the next one",
                 lambda: cl.open_backward(c))


def end_to_end_check(client_keys):
    """§13.5 and §7.2 step 3: a rendezvous circuit's end-to-end hop (index 3), both ways."""
    service_keys = [(bytes([i + 10]) * 32, bytes([i + 110]) * 32) for i in (1, 2, 3)]
    e2e_kf, e2e_kb = b"\x77" * 32, b"\x88" * 32
    client, service = Endpoint.client(client_keys), Endpoint.client(service_keys)
    client.add_end_to_end(e2e_kf, e2e_kb, client_side=True)
    service.add_end_to_end(e2e_kf, e2e_kb, client_side=False)
    c_relays = [RelayHop(kf, kb) for kf, kb in client_keys]  # c_relays[2] is R
    s_relays = [RelayHop(kf, kb) for kf, kb in service_keys]  # s_relays[2] is R too

    def cross(sender_relays, receiver_relays, receiver, cell):
        for r in sender_relays:
            kind, cell = r.forward(cell)
            if kind != "FORWARD":
                return None
        for r in reversed(receiver_relays):  # R joins: the FORWARD cell becomes backward
            cell = r.wrap(cell)
        return receiver.open_backward(cell)

    ok = True
    for i in range(3):
        msg = relay_msg(2, 1, bytes([i]) * (FORWARD_MESSAGE_MAX - 5))
        got = attempt(lambda: cross(c_relays, s_relays, service, client.seal_forward(msg, 3)))
        ok = ok and got is not None and got[0] == 3 and got[1][:len(msg)] == msg
        msg = relay_msg(2, 1, bytes([i + 100]) * 50)
        got = attempt(lambda: cross(s_relays, c_relays, client, service.seal_forward(msg, 3)))
        ok = ok and got is not None and got[0] == 3 and got[1][:len(msg)] == msg
    # A message from R itself still reaches the client between end-to-end cells.
    got = attempt(lambda: client.open_backward(
        c_relays[0].wrap(c_relays[1].wrap(c_relays[2].originate(b"\x08")))))
    ok = ok and got is not None and got[0] == 2
    got = attempt(lambda: cross(c_relays, s_relays, service, client.seal_forward(MSG_DATA_HI, 3)))
    ok = ok and got is not None and got[0] == 3 and got[1][:len(MSG_DATA_HI)] == MSG_DATA_HI
    check_true("§13.5 end-to-end hop: cells cross the join both ways and open at hop index 3", ok)


# ---------------------------------------------------------------- §3 descriptors

DESC_CONTEXT = b"anonnet relay descriptor v1\0"


def encode_body(identity, onion, handshakes, addrs, flags, ports, bandwidth, published, expires):
    # §3.1: version 2 ‖ identity ‖ onion_key ‖ handshakes ‖ n_addrs ‖ addrs ‖ flags ‖ ….
    out = bytes([2]) + identity + onion + bytes([handshakes, len(addrs)])
    for ip, port in addrs:
        out += bytes([4 if len(ip) == 4 else 6]) + ip + struct.pack(">H", port)
    out += bytes([flags, len(ports)])
    for lo, hi in ports:
        out += struct.pack(">HH", lo, hi)
    out += struct.pack(">IQQ", bandwidth, published, expires)
    return out


DESC_BODY = (
    "02d04ab232742bb4ab3a1368bd4615e4e6d0224ab71a016baf8520a332c97787"
    "370faa684ed28867b97f4a6a2dee5df8ce974e76b7018e3f22a1c4cf2678570f"
    "200301047f0000011b5903020050005001bb01bb000f4240000000006553f100"
    "0000000065554280"
)
DESC_SIG = (
    "7954e3355f3f0fb164f218cc254b8f4e9e4fc6ac3da6ccbfcd98083c4a095336"
    "9d43e18211c214041ef8ba066d1a0bf589ba8ce1be92e7bb449b72c87a4a7601"
)
DESC_TEXT = (
    "AGgC0EqyMnQrtKs6E2i9RhXk5tAiSrcaAWuvhSCjMsl3hzcPqmhO0ohnuX9Kai3uXfjO"
    "l052twGOPyKhxM8meFcPIAMBBH8AAAEbWQMCAFAAUAG7AbsAD0JAAAAAAGVT8QAAAAAA"
    "ZVVCgHlU4zVfPw+xZPIYzCVLj06eT8asPabMv82YCDxKCVM2nUPhghHCFAQe+LoGbRoL"
    "9Ym6jOG+kue7RJtyyHpKdgE="
)


def descriptor_vector():
    seed = b"\x11" * 32
    identity = ed25519_public(seed)
    onion = x25519_public(b"\x22" * 32)
    body = encode_body(
        identity, onion, 0x03, [(bytes([127, 0, 0, 1]), 7001)], 0x01 | 0x02,
        [(80, 80), (443, 443)], 1_000_000, 1_700_000_000, 1_700_086_400,
    )
    check("§3.3 body", body, DESC_BODY)
    sig = Ed25519PrivateKey.from_private_bytes(seed).sign(DESC_CONTEXT + body)
    check("§3.3 signature", sig, DESC_SIG)
    signed = struct.pack(">H", len(body)) + body + sig
    check("§3.3 text", base64.b64encode(signed).decode(), DESC_TEXT)
    # Verify as a reader would: parse the text form, check with the body's own key.
    raw = base64.b64decode(DESC_TEXT)
    (n,) = struct.unpack(">H", raw[:2])
    rbody, rsig = raw[2:2 + n], raw[2 + n:]
    ok = len(rsig) == 64 and len(DESC_CONTEXT) == 28
    try:
        Ed25519PublicKey.from_public_bytes(rbody[1:33]).verify(rsig, DESC_CONTEXT + rbody)
    except Exception:
        ok = False
    check_true("§3.2 text form parses and its signature verifies", ok)
    check("§3.3 NodeId", node_id(rbody[1:33]), HANDSHAKE["NODE_ID"])
    check_true("§3.1 handshakes 0x03 (types 1 and 2) follows onion_key", rbody[65] == 0x03)


# ---------------------------------------------------------------- §6 relay messages

def relay_msg(cmd, stream, payload):
    return bytes([cmd]) + struct.pack(">HH", stream, len(payload)) + payload


def message_examples():
    host = b"example.com"
    m = relay_msg(1, 1, bytes([1, len(host)]) + host + struct.pack(">H", 443))
    check("§6.3 BEGIN host", m, "010001000f010b6578616d706c652e636f6d01bb")
    m = relay_msg(1, 2, bytes([4, 192, 0, 2, 7]) + struct.pack(">H", 80))
    check("§6.3 BEGIN IPv4", m, "010002000704c00002070050")
    m = relay_msg(3, 1, bytes([6]))
    check("§6.3 END DONE", m, "030001000106")
    m = relay_msg(6, 0, b"\xaa" * 32 + bytes([4, 127, 0, 0, 1]) + struct.pack(">H", 7002)
                  + b"\xbb" * 32 + b"\xcc" * 32)
    check("§6.3 EXTEND", m,
          "0600000067" + "aa" * 32 + "047f0000011b5a" + "bb" * 32 + "cc" * 32)
    check_true("§6.1 max DATA is 802 forward and 977 backward, at every hop",
               (FORWARD_MESSAGE_MAX - 5, BACKWARD_MESSAGE_MAX - 5) == (802, 977))



# ---------------------------------------------------------------- §12 hidden services
#
# Ed25519 point arithmetic in pure Python (RFC 8032 §5.1, extended coordinates), because
# the blinded key A' = h·A and signing with the blinded scalar need scalar × point, which
# `cryptography` does not expose. Slow but small; signatures are then checked with
# `cryptography`'s ordinary Ed25519 verification.

ED_P = 2**255 - 19
ED_L = 2**252 + 27742317777372353535851937790883648493
ED_D = (-121665 * pow(121666, ED_P - 2, ED_P)) % ED_P
ED_SQRT_M1 = pow(2, (ED_P - 1) // 4, ED_P)
ED_IDENTITY = (0, 1, 1, 0)


def ed_add(p, q):
    (x1, y1, z1, t1), (x2, y2, z2, t2) = p, q
    a = (y1 - x1) * (y2 - x2) % ED_P
    b = (y1 + x1) * (y2 + x2) % ED_P
    c = 2 * t1 * t2 * ED_D % ED_P
    d = 2 * z1 * z2 % ED_P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % ED_P, g * h % ED_P, f * g % ED_P, e * h % ED_P)


def ed_mul(k, p):
    q = ED_IDENTITY
    while k:
        if k & 1:
            q = ed_add(q, p)
        p, k = ed_add(p, p), k >> 1
    return q


def ed_encode(p):
    x, y, z, _ = p
    zi = pow(z, ED_P - 2, ED_P)
    x, y = x * zi % ED_P, y * zi % ED_P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def ed_decode(b):
    y = int.from_bytes(b, "little")
    sign, y = y >> 255, y & ((1 << 255) - 1)
    if y >= ED_P:
        raise ValueError("non-canonical y")
    x2 = (y * y - 1) * pow(ED_D * y * y + 1, ED_P - 2, ED_P) % ED_P
    x = pow(x2, (ED_P + 3) // 8, ED_P)
    if (x * x - x2) % ED_P:
        x = x * ED_SQRT_M1 % ED_P
    if (x * x - x2) % ED_P:
        raise ValueError("not on the curve")
    if x & 1 != sign:
        if x == 0:
            raise ValueError("x = 0 with sign bit")
        x = ED_P - x
    return (x, y, 1, x * y % ED_P)


ED_B = ed_decode((4 * pow(5, ED_P - 2, ED_P) % ED_P).to_bytes(32, "little"))


def derive_key(context: str, material: bytes, length: int = 32) -> bytes:
    return blake3.blake3(material, derive_key_context=context).digest(length=length)


def anon_host(pk: bytes) -> str:
    # §12.1: base32(A ‖ checksum[2] ‖ version[1]), lower case, no padding, + ".anon".
    version = bytes([1])
    checksum = blake3.blake3(b"anonnet .anon checksum" + pk + version).digest(length=2)
    label = base64.b32encode(pk + checksum + version).decode().lower().rstrip("=")
    return label + ".anon"


def anon_parse(host: str) -> bytes:
    label = host.lower().rsplit(".anon", 1)[0].rsplit(".", 1)[-1]
    raw = base64.b32decode(label.upper())
    pk, checksum, version = raw[:32], raw[32:34], raw[34:]
    if blake3.blake3(b"anonnet .anon checksum" + pk + version).digest(length=2) != checksum:
        raise ValueError("checksum")
    return pk


def blinding_factor(pk: bytes, period: int) -> int:
    wide = derive_key("anonnet 2026 hs blinding factor", pk + struct.pack(">Q", period), 64)
    return int.from_bytes(wide, "little") % ED_L


def blinded_sign(seed: bytes, period: int, msg: bytes):
    """§12.2: sign msg with the blinded key of `seed` for `period`; returns (A', sig)."""
    expanded = hashlib.sha512(seed).digest()
    a = bytearray(expanded[:32])
    a[0] &= 248
    a[31] &= 127
    a[31] |= 64
    a = int.from_bytes(a, "little")
    pk = ed_encode(ed_mul(a, ED_B))
    h = blinding_factor(pk, period)
    a_blind = h * a % ED_L
    prefix_blind = derive_key("anonnet 2026 hs blinded nonce prefix",
                              expanded[32:] + struct.pack(">Q", period))
    blinded_pk = ed_encode(ed_mul(h, ed_decode(pk)))
    assert blinded_pk == ed_encode(ed_mul(a_blind, ED_B))
    r = int.from_bytes(hashlib.sha512(prefix_blind + msg).digest(), "little") % ED_L
    big_r = ed_encode(ed_mul(r, ED_B))
    k = int.from_bytes(hashlib.sha512(big_r + blinded_pk + msg).digest(), "little") % ED_L
    return blinded_pk, big_r + ((r + k * a_blind) % ED_L).to_bytes(32, "little")


def relay_link(node_id: bytes, onion_key: bytes, ip: bytes, port: int) -> bytes:
    return node_id + onion_key + bytes([4 if len(ip) == 4 else 6]) + ip + struct.pack(">H", port)


HS = {
    "A": "af06a3e3291714e4f356c19c9b15cd1951ec6e6662aa77be07547f289383341d",
    "host": "v4dkhyzjc4koj42wygojwfondfi6y3tgmkvhppqhkr7sre4dgqoupmqb.anon",
    "h": "a8812f05b7018eb0ca0dbd99c36c4722687b6dc5f7f2e70fb3fd01396297df0d",
    "A'": "7356a87765446b94193b791ea15a08326a46aea9629a3586638dad7cc65bea5d",
    "index": "bf25e51582839ef05e7e70f730a85d566b6ab6c0e7c136eb4e76b8e4a35ef008",
    "body_key": "a9955d8889165a6ac19598469ace0047a99fd4d5701b6c68d4652a3ef60ba865",
    "desc[0..96]": (
        "037356a87765446b94193b791ea15a08326a46aea9629a3586638dad7cc65bea"
        "5d0000000000004e2000000000000000010000000067008f905a5a5a5a5a5a5a"
        "5a5a5a5a5a5a5a5a5a01f7853115c7442e280912145193125120febed492ea46"
    ),
    "signature": (
        "a19bb7afa220a8131af283e4ca9d4a39753acbf48f948102872b6aac956ae0ea"
        "465e091ec047b9240e0a0d9e403f36f22664194be8fb63102796c31b9acbb30f"
    ),
    "BLAKE3(desc)": "b64b8795bf4fd464c5fc0dab07c7e5ce118138cc5ac3efa22e337ddb716cf2cb",
    "enc_key": "38ab664bd86f77d7e66bdd9ae0792913a94fd8b33a1260027e4b46c1f4884c67",
    "sealed": (
        "219e4d800da968d2a5fcb009c784f4746c7138edb9ee4844b739e830b05cf424"
        "e2a95abe0d7a6268cbbcfaabf65a4ac170025b381dd3fa937499b72d729411fb"
        "2e52f5e88130144b9709ce1bcfb727eae9b1cac7e06ef547ccc8f371016c2acd"
        "f8a604f491ed5be57216d1d89abf27225cc54f3256e2bf4501f239cbefbe430f"
        "607462a2cd362a33828d432b1e4f7e6699d930026a0cd96942a74f7125a8e684"
        "47e53b3ba260f87694960087cb231eb3348428ce4d1bab906ba0e1a62c6d0b1f"
        "e53df5fc206621fd4eb1e3d50d41cc51b69a2ab60f1f190320661ab0807f9314"
    ),
}


def hs_vectors():
    seed, period = b"\x61" * 32, 20_000
    pk = ed25519_public(seed)
    check("§12.1 A (service seed 0x61×32)", pk, HS["A"])
    host = anon_host(pk)
    check("§12.1 host name", host, HS["host"])
    check_true("§12.1 host is 61 characters", len(host) == 61)
    check("§12.1 parse (upper case, with a subdomain)", anon_parse("www." + host.upper()), HS["A"])
    typo = host[:10] + ("a" if host[10] != "a" else "b") + host[11:]
    try:
        anon_parse(typo)
        check_true("§12.1 a typo fails the checksum", False)
    except ValueError:
        check_true("§12.1 a typo fails the checksum", True)

    check("§12.2 blinding factor h (little-endian scalar)",
          blinding_factor(pk, period).to_bytes(32, "little"), HS["h"])
    message = b"anonnet blinded signature test"
    blinded_pk, sig = blinded_sign(seed, period, message)
    check("§12.2 blinded key A' for period 20000", blinded_pk, HS["A'"])
    try:
        Ed25519PublicKey.from_public_bytes(blinded_pk).verify(sig, message)
        ok = True
    except Exception:
        ok = False
    check_true("§12.2 a blinded signature verifies as plain Ed25519 under A'", ok)
    check_true("§12.2 A' differs per period and from A",
               len({pk, blinded_pk, blinded_sign(seed, period + 1, message)[0]}) == 3)
    index = derive_key("anonnet 2026 hs descriptor index", blinded_pk + struct.pack(">Q", period))
    check("§12.3 descriptor index", index, HS["index"])

    # §12.3 descriptor (version 3): body, body key, AEAD, signature. Each introduction
    # point is relay link ‖ auth_key ‖ enc_key; the body is pow params (45 zero bytes: no
    # proof of work) ‖ n ‖ points ‖ zeros to 487 bytes (45 + 1 + 3 × 147).
    enc_key = x25519_public(b"\x55" * 32)
    check("§12.4 enc_key (X25519 secret 0x55×32)", enc_key, HS["enc_key"])
    intro = (relay_link(b"\x01" * 32, b"\x02" * 32, bytes([127, 0, 0, 1]), 7001)
             + b"\x88" * 32 + enc_key)
    check_true("§12.3 an IPv4 introduction point is 135 bytes", len(intro) == 135)
    ipv6_point = relay_link(bytes(32), bytes(32), bytes(16), 0) + bytes(64)
    check_true("§12.3 an IPv6 introduction point is 147 bytes", len(ipv6_point) == 147)
    body_len = 45 + 1 + 3 * len(ipv6_point)
    check_true("§12.3 the body is 487 bytes", body_len == 487)
    body = bytes(45) + bytes([1]) + intro
    body += bytes(body_len - len(body))
    revision, expires, salt = 1, 20_001 * 86_400 + 3600, b"\x5a" * 16
    header = bytes([3]) + blinded_pk + struct.pack(">QQQ", period, revision, expires) + salt
    check_true("§12.3 header is 73 bytes", len(header) == 73)
    body_key = derive_key("anonnet 2026 hs descriptor body key",
                          pk + blinded_pk + struct.pack(">Q", period) + salt)
    check("§12.3 body key", body_key, HS["body_key"])
    ct = ChaCha20Poly1305(body_key).encrypt(bytes(12), body, header)
    unsigned = header + struct.pack(">H", len(ct)) + ct
    _, dsig = blinded_sign(seed, period, b"anonnet-hs-descriptor-v1" + unsigned)
    desc = unsigned + dsig
    check_true("§12.3 ct_len is 503", len(ct) == 503)
    check_true("§12.3 descriptor is 642 bytes", len(desc) == 642)
    check("§12.3 descriptor[0..96]", desc[:96], HS["desc[0..96]"])
    check("§12.3 descriptor signature", dsig, HS["signature"])
    check("§12.3 BLAKE3(descriptor)", blake3.blake3(desc).hexdigest(), HS["BLAKE3(desc)"])
    # A client that knows the address: A' from A, the key from A, open with the header as AAD.
    opened = ChaCha20Poly1305(body_key).decrypt(bytes(12), desc[75:75 + 503], desc[:73])
    check_true("§12.3 the body opens with the address-derived key", opened == body)

    # §12.4 introduction.
    # cookie ‖ pow u8 (0) ‖ 40 zero bytes ‖ relay link ‖ client_pk ‖ zeros to 176 bytes.
    plaintext = (b"\xc0" * 20 + bytes(41)
                 + relay_link(b"\x03" * 32, b"\x04" * 32, bytes([127, 0, 0, 1]), 7002)
                 + b"\x33" * 32)
    plaintext += bytes(176 - len(plaintext))
    e, auth_key = b"\x66" * 32, b"\x88" * 32
    big_e = x25519_public(e)
    shared = x25519(e, enc_key)
    key = derive_key("anonnet 2026 hs introduce key", shared + big_e + enc_key + auth_key)
    sealed = big_e + ChaCha20Poly1305(key).encrypt(bytes(12), plaintext, auth_key)
    check("§12.4 sealed introduction", sealed, HS["sealed"])
    # The service's side: X25519(enc secret, E).
    key2 = derive_key("anonnet 2026 hs introduce key",
                      x25519(b"\x55" * 32, sealed[:32]) + sealed[:32] + enc_key + auth_key)
    check_true("§12.4 the service opens it",
               ChaCha20Poly1305(key2).decrypt(bytes(12), sealed[32:], auth_key) == plaintext)


POW = {
    "challenge": (
        "616e6f6e6e657420687320706f77207631001111111111111111111111111111"
        "1111111111111111111111111111111111112222222222222222222222222222"
        "2222222222222222222222222222222222220a00000000000000000000000000"
        "000000000008"
    ),
    "solution": "f62d753ddc07c83fa14e0fafa902d8db",
    "R": 0x18EB11BA,
}


def hs_pow_vector():
    # §13.9: challenge = "anonnet hs pow v1\0" ‖ service_id ‖ seed ‖ nonce ‖ effort u32;
    # R = BLAKE3(challenge ‖ solution)[0..4] big-endian; valid iff R × effort ≤ 2^32 − 1.
    # (The Equi-X solution itself is checked by the Rust test; no Python Equi-X here.)
    effort = 8
    nonce = bytes([10]) + bytes(15)
    challenge = b"anonnet hs pow v1\0" + b"\x11" * 32 + b"\x22" * 32 + nonce + struct.pack(">I", effort)
    check_true("§13.9 the challenge is 102 bytes", len(challenge) == 102)
    check("§13.9 challenge", challenge, POW["challenge"])
    r = int.from_bytes(blake3.blake3(challenge + bytes.fromhex(POW["solution"])).digest()[:4], "big")
    check_true("§13.9 R", r == POW["R"])
    check_true("§13.9 R × effort ≤ 2^32 − 1", r * effort <= 0xFFFFFFFF)
    check_true("§13.9 the same R misses effort 11", r * 11 > 0xFFFFFFFF)


DARK = {
    "key": "4fbc98964b960102bdd39ec72b2f09b0b81bfe54ab4e9019c9b29959b6d9666a",
    "nonce": 5,
    "pow": "0008f6b6de3298f6928102960eff2219927c28c0b46f1a9b1b215aa84abe20d1",
    "record": (
        "02076578616d706c65af06a3e3291714e4f356c19c9b15cd1951ec6e6662aa77"
        "be07547f289383341ddb995fe25169d141cab9bbba92baa01f9f2e1ece7df4cb"
        "2ac05190f37fcc1f9d000000006b49d200000000006b4b238000000000000000"
        "055d1b69ba21d433517d6801e0d7d04fe34f43a2292fb4eceeed14de7048670b"
        "63d5c18ccc8b1a145019843a33cb0957b7cfc37b6ea12bf16ba36472a7c12b2e"
        "0b01c050c5637a44fa86000000006b715f007d9637653b7451a90b88318135e2"
        "674ac771207b35125d005556559c004b4c7d5ad2341c4db8469cb38d7f797464"
        "f5fe238429de4361722726cecd6d0892c201"
    ),
}


def leading_zero_bits(h: bytes) -> int:
    n = int.from_bytes(h, "big")
    return 256 - n.bit_length()


def dark_vector():
    name = b"example"
    check("§12.5 dark_key(\"example\")", derive_key("anonnet 2026 dark name key", name), DARK["key"])
    owner_seed = b"\x41" * 32
    owner = ed25519_public(owner_seed)
    address = ed25519_public(b"\x61" * 32)
    published, expires = 1_800_000_000, 1_800_086_400
    fields = bytes([len(name)]) + name + address + owner + struct.pack(">QQ", published, expires)
    nonce = 0
    while leading_zero_bits(blake3.blake3(b"anonnet-dark-pow-v1" + fields
                                          + struct.pack(">Q", nonce)).digest()) < 8:
        nonce += 1
    check("§12.5 first nonce with 8 bits of work", str(nonce), str(DARK["nonce"]))
    pow_hash = blake3.blake3(b"anonnet-dark-pow-v1" + fields + struct.pack(">Q", nonce)).digest()
    check("§12.5 work hash", pow_hash, DARK["pow"])
    unsigned = bytes([2]) + fields + struct.pack(">Q", nonce)
    sig = Ed25519PrivateKey.from_private_bytes(owner_seed).sign(b"anonnet-dark-record-v1" + unsigned)
    # One registration receipt (§12.5): authority seed 0x51×32, network id 0x33×32.
    authority_seed = b"\x51" * 32
    network_id = b"\x33" * 32
    receipt_expires = 1_802_592_000
    message = (b"anonnet-dark-receipt-v1" + network_id + bytes([len(name)]) + name + owner
               + struct.pack(">Q", receipt_expires))
    receipt = (ed25519_public(authority_seed)[:8] + struct.pack(">Q", receipt_expires)
               + Ed25519PrivateKey.from_private_bytes(authority_seed).sign(message))
    check("§12.5 record with one receipt", unsigned + sig + bytes([1]) + receipt, DARK["record"])


# ---------------------------------------------------------------- §14 directory

VOTE_CONTEXT = b"anonnet vote v1\0"
CONSENSUS_CONTEXT = b"anonnet consensus v1\0"
MAX_CLOCK_SKEW = 300


def network_id(name: str, identities) -> bytes:
    # §14.1: name_len u16 ‖ name ‖ the identities, sorted.
    raw = name.encode()
    return derive_key("anonnet 2026 network id",
                      struct.pack(">H", len(raw)) + raw + b"".join(sorted(identities)))


def dir_entry(r) -> bytes:
    # §14.3: identity ‖ onion_key ‖ handshakes ‖ atype ‖ ip ‖ port ‖ flags ‖ weight ‖
    # n_ports ‖ ranges.
    ip = r["ip"]
    out = r["identity"] + r["onion"] + bytes([r["handshakes"], 4 if len(ip) == 4 else 6]) + ip
    out += struct.pack(">HBIB", r["port"], r["flags"], r["weight"], len(r["ports"]))
    for lo, hi in r["ports"]:
        out += struct.pack(">HH", lo, hi)
    return out


def dir_entries(relays) -> bytes:
    relays = sorted(relays, key=lambda r: r["identity"])
    return struct.pack(">I", len(relays)) + b"".join(dir_entry(r) for r in relays)


def srv_reveal(secret: bytes, valid_after: int) -> bytes:
    # §14.7: BLAKE3-keyed(s, "anonnet 2026 srv reveal" ‖ V u64).
    return blake3.blake3(b"anonnet 2026 srv reveal" + struct.pack(">Q", valid_after),
                         key=secret).digest(length=32)


def srv_commit(reveal: bytes) -> bytes:
    return derive_key("anonnet 2026 srv commit", reveal)


def shared_random_value(t, previous_srv, prior_commits, reveals, majority):
    # §14.7 steps 1-3.
    valid = sorted((a, r) for a, r in reveals if (a, srv_commit(r)) in prior_commits)
    one_each = []
    for a, r in valid:
        if not one_each or one_each[-1][0] != a:
            one_each.append((a, r))
    if len(one_each) >= majority:
        return derive_key("anonnet 2026 srv",
                          struct.pack(">Q", t) + previous_srv + bytes([len(one_each)])
                          + b"".join(a + r for a, r in one_each))
    return derive_key("anonnet 2026 srv disaster", struct.pack(">Q", t) + previous_srv)


def vote_body(nid, authority, times, commit, reveal, relays) -> bytes:
    # §14.5 vote body.
    out = bytes([2]) + nid + authority + struct.pack(">QQQ", *times) + commit
    out += (bytes([1]) + reveal) if reveal is not None else bytes([0])
    return out + dir_entries(relays)


def consensus_body(nid, times, srv_current, srv_previous, hs_srvs, commits, relays) -> bytes:
    # §14.6 consensus body; hs_srvs = (hs_srv_current, hs_srv_previous), §14.7.
    out = bytes([2]) + nid + struct.pack(">QQQ", *times) + srv_current + srv_previous
    out += hs_srvs[0] + hs_srvs[1]
    out += bytes([len(commits)]) + b"".join(a + c for a, c in sorted(commits))
    return out + dir_entries(relays)


def compute_relays(votes, majority):
    """§14.5 computation, steps 2-5 and 7: the consensus relays from the votes' relays."""
    by_id = {}
    for relays in votes:
        for r in relays:
            by_id.setdefault(r["identity"], []).append(r)
    out = []
    for identity in sorted(by_id):
        listing = by_id[identity]
        if len(listing) < majority:
            continue
        variants = {}
        for r in listing:
            key = dir_entry(dict(r, flags=0, weight=0))
            variants.setdefault(key, [0, r])[0] += 1
        _, (_, chosen) = max(variants.items(), key=lambda kv: (kv[1][0], kv[0]))
        flags = 0
        for bit in range(8):
            if 2 * sum(1 for r in listing if r["flags"] >> bit & 1) > len(listing):
                flags |= 1 << bit
        weights = sorted(r["weight"] for r in listing)
        out.append(dict(chosen, flags=flags, weight=weights[(len(weights) - 1) // 2]))
    return out


def parse_signed_consensus(data: bytes):
    """§14.6 layout: returns (body, fields, [(authority, signature)])."""
    (body_len,) = struct.unpack(">I", data[:4])
    body = data[4:4 + body_len]
    rest = data[4 + body_len:]
    n_sigs = rest[0]
    if n_sigs > 32 or len(rest) != 1 + 96 * n_sigs:
        raise ValueError("signatures")
    sigs = [(rest[1 + 96 * i:33 + 96 * i], rest[33 + 96 * i:97 + 96 * i]) for i in range(n_sigs)]
    if body[0] != 2:
        raise ValueError("version")
    nid = body[1:33]
    va, fu, vu = struct.unpack(">QQQ", body[33:57])
    if not va < fu <= vu:
        raise ValueError("times")
    # srv_current, srv_previous, hs_srv_current, hs_srv_previous: 4 x 32 bytes from 57.
    n_commits = body[185]
    pos = 186 + 64 * n_commits
    (n,) = struct.unpack(">I", body[pos:pos + 4])
    return body, {"network_id": nid, "valid_after": va, "valid_until": vu, "n": n}, sigs


def client_accepts(data: bytes, identities, nid, now) -> bool:
    """§14.6 checks 1-4."""
    try:
        body, f, sigs = parse_signed_consensus(data)
    except (ValueError, IndexError, struct.error):
        return False
    if f["network_id"] != nid:
        return False
    counted = set()
    for a, s in sigs:
        if a in counted or a not in identities:
            continue
        try:
            Ed25519PublicKey.from_public_bytes(a).verify(s, CONSENSUS_CONTEXT + body)
            counted.add(a)
        except Exception:
            pass
    majority = len(identities) // 2 + 1
    return (len(counted) >= majority
            and f["valid_after"] - MAX_CLOCK_SKEW <= now < f["valid_until"])


DIR = {
    "authority 1": "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c",
    "authority 2": "8139770ea87d175f56a35466c34c7ecccb8d8a91b4ee37a25df60f5b8fc9b394",
    "authority 3": "ed4928c628d1c2c6eae90338905995612959273a5c63f93636c14614ac8737d1",
    "network_id": "0ce1f985dcfb757cb0c97d0d29246c509d0aa1d4d42d03031899838f3703e09f",
    "entry A": (
        "d04ab232742bb4ab3a1368bd4615e4e6d0224ab71a016baf8520a332c9778737"
        "0faa684ed28867b97f4a6a2dee5df8ce974e76b7018e3f22a1c4cf2678570f20"
        "03047f0000011b631f000f424001005001bb"
    ),
    "entry B": (
        "204040e364c10f2bec9c1fe500a1cd4c247c89d650a01ed7e82caba867877c21"
        "9a4503a98ab10fe8d354c9c42cbd0c9d7944f52e7d14d8ea59775e7dc9e3bf4b"
        "010620010db80000000000000000000000121b640300004e2000"
    ),
    "reveal_1(T)": "099890d6bebda2ff23cc3447c046e0e4c50def374930e8968533f73e32d867ba",
    "commit_1(T)": "8a01cea990ceff4de2f034b55cf140636c1fbc5c29b7c1d0ed4f885cd8f1a549",
    "commit_1(T + L)": "e77a29d3d7dfe10bb3f47dfc701399ec56ad540a664119d7059ea19cf8587a24",
    "srv_current": "03487fd8574b491b357e18940cb618e0cb002d6e32bad29a720c6029e994beb1",
    "SRV disaster": "a60ff3c4475cdb4a1e4816932734fb05724fcb8d83b1d15f8a9fbfda8a54b5dc",
    "vote body": (
        "020ce1f985dcfb757cb0c97d0d29246c509d0aa1d4d42d03031899838f3703e0"
        "9f8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f"
        "5c000000006b49d200000000006b49e010000000006b49fc30e77a29d3d7dfe1"
        "0bb3f47dfc701399ec56ad540a664119d7059ea19cf8587a2401099890d6bebd"
        "a2ff23cc3447c046e0e4c50def374930e8968533f73e32d867ba000000022040"
        "40e364c10f2bec9c1fe500a1cd4c247c89d650a01ed7e82caba867877c219a45"
        "03a98ab10fe8d354c9c42cbd0c9d7944f52e7d14d8ea59775e7dc9e3bf4b0106"
        "20010db80000000000000000000000121b640300004e2000d04ab232742bb4ab"
        "3a1368bd4615e4e6d0224ab71a016baf8520a332c97787370faa684ed28867b9"
        "7f4a6a2dee5df8ce974e76b7018e3f22a1c4cf2678570f2003047f0000011b63"
        "1f000f424001005001bb"
    ),
    "vote signature": (
        "1bb9a438762a2f8f92826acbb31a35b8ee94121c20f790706ead43efe3856a8d"
        "1039f75d1441b9d74f974757244536903c8c2aeaeb7b8aaa5c903e025fe07409"
    ),
    "BLAKE3(signed vote)": "4d176a146c5fc3c108ad90af94a1ba4732b77ae9d09f874866cbff7c2bb3ad07",
    "consensus body": (
        "020ce1f985dcfb757cb0c97d0d29246c509d0aa1d4d42d03031899838f3703e0"
        "9f000000006b49d200000000006b49e010000000006b49fc3003487fd8574b49"
        "1b357e18940cb618e0cb002d6e32bad29a720c6029e994beb177777777777777"
        "7777777777777777777777777777777777777777777777777766666666666666"
        "6666666666666666666666666666666666666666666666666655555555555555"
        "55555555555555555555555555555555555555555555555555038139770ea87d"
        "175f56a35466c34c7ecccb8d8a91b4ee37a25df60f5b8fc9b394681fe8a6c41e"
        "5f2e8b4abb07236915fcec5a0b189d8e7476fe0d8ad4c8f38b458a88e3dd7409"
        "f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5ce77a29d3d7df"
        "e10bb3f47dfc701399ec56ad540a664119d7059ea19cf8587a24ed4928c628d1"
        "c2c6eae90338905995612959273a5c63f93636c14614ac8737d1de8198b5f306"
        "5f95bc05b861f7ba4abed5c97a512cdd5c80c7d36cbbbc3e3d4d000000022040"
        "40e364c10f2bec9c1fe500a1cd4c247c89d650a01ed7e82caba867877c219a45"
        "03a98ab10fe8d354c9c42cbd0c9d7944f52e7d14d8ea59775e7dc9e3bf4b0106"
        "20010db80000000000000000000000121b640300004e2000d04ab232742bb4ab"
        "3a1368bd4615e4e6d0224ab71a016baf8520a332c97787370faa684ed28867b9"
        "7f4a6a2dee5df8ce974e76b7018e3f22a1c4cf2678570f2003047f0000011b63"
        "1f000f424001005001bb"
    ),
    "digest": "4011f4bed8119055068162e70359ffab7e1f2c1ab0552c5d0337ba520132bd96",
    "signature 1": (
        "9c8ede9e8ba79f687d9c6e8d5212b297067781f542b93d7722840f6b35ad38a7"
        "79b5205fd726934afc2939957c513f6e0b92a3e082e5dc4afe82a14ccb7a2703"
    ),
    "signature 2": (
        "ec58a66c10910fe779ee4ee98badbf12f07d6624f9f2423bdef0e434c0722bed"
        "f2ea12d891a7b63a9cec0102f2e713ac77bbf2ec44c02a8e1654c4a3129f0200"
    ),
    "BLAKE3(signed consensus)": "5d72670941768d6a4ae8e568a6d51f6a78db0193ee4f497e99875088dfdc479d",
}
DIR_FRAMES = {
    "GET_CONSENSUS request": "110000000103",
    "GET_VOTE request for T": "110000000907000000006b49d200",
    "CONSENSUS answer, none": "000000020400",
    "UPLOADED answer": "0000000c02010974696d6564206f7574",
}


def directory_vectors():
    t, period = 1_800_000_000, 3600
    times = (t, t + period, t + 3 * period)
    seeds = [bytes([i]) * 32 for i in (1, 2, 3)]
    auths = [ed25519_public(s) for s in seeds]
    for i, a in enumerate(auths, 1):
        check(f"§14.10 authority {i} identity", a, DIR[f"authority {i}"])
    nid = network_id("vectors", auths)
    check("§14.1 network_id", nid, DIR["network_id"])
    check_true("§14.1 network_id ignores the authorities' order",
               network_id("vectors", auths[::-1]) == nid
               and network_id("vectorz", auths) != nid)
    majority = len(auths) // 2 + 1

    relay_a = {"identity": ed25519_public(b"\x11" * 32), "onion": x25519_public(b"\x22" * 32),
               "handshakes": 0x03, "ip": bytes([127, 0, 0, 1]), "port": 7011, "flags": 0x1f,
               "weight": 1_000_000, "ports": [(80, 443)]}
    relay_b = {"identity": ed25519_public(b"\x12" * 32), "onion": x25519_public(b"\x23" * 32),
               "handshakes": 0x01, "ip": bytes.fromhex("20010db8000000000000000000000012"),
               "port": 7012, "flags": 0x03, "weight": 20_000, "ports": []}
    entry_a, entry_b = dir_entry(relay_a), dir_entry(relay_b)
    check("§14.10 entry A", entry_a, DIR["entry A"])
    check("§14.10 entry B", entry_b, DIR["entry B"])
    check_true("§14.3 entry sizes: 82 (IPv4, one range) and 90 (IPv6, none)",
               (len(entry_a), len(entry_b)) == (82, 90))
    check_true("§14.3 relay A is NodeId of §3.3", node_id(relay_a["identity"]).hex()
               == HANDSHAKE["NODE_ID"])

    secrets = [bytes([0xa0 + i]) * 32 for i in (1, 2, 3)]
    reveals = [(a, srv_reveal(s, t)) for a, s in zip(auths, secrets)]
    prior_commits = [(a, srv_commit(r)) for a, r in reveals]
    next_commits = [(a, srv_commit(srv_reveal(s, t + period))) for a, s in zip(auths, secrets)]
    check("§14.10 reveal_1(T)", reveals[0][1], DIR["reveal_1(T)"])
    check("§14.10 commit_1(T)", prior_commits[0][1], DIR["commit_1(T)"])
    check("§14.10 commit_1(T + L)", next_commits[0][1], DIR["commit_1(T + L)"])
    previous_srv = b"\x77" * 32
    srv = shared_random_value(t, previous_srv, prior_commits, reveals, majority)
    check("§14.7 SRV, three valid reveals", srv, DIR["srv_current"])
    disaster = shared_random_value(t, previous_srv, prior_commits, reveals[:1], majority)
    check("§14.7 SRV, disaster", disaster, DIR["SRV disaster"])
    check_true("§14.7 disaster value does not depend on the reveals",
               disaster == shared_random_value(t, previous_srv, prior_commits, [], majority))
    forged = [(auths[0], b"\x00" * 32)] + reveals[1:]
    check_true("§14.7 a reveal that does not match its commit is not counted",
               shared_random_value(t, previous_srv, prior_commits, forged, majority)
               == shared_random_value(t, previous_srv, prior_commits, reveals[1:], majority)
               != srv)

    # §14.5: the vote of authority 1.
    body = vote_body(nid, auths[0], times, next_commits[0][1], reveals[0][1], [relay_a, relay_b])
    check("§14.10 vote body", body, DIR["vote body"])
    sig = Ed25519PrivateKey.from_private_bytes(seeds[0]).sign(VOTE_CONTEXT + body)
    check("§14.10 vote signature", sig, DIR["vote signature"])
    signed_vote = struct.pack(">I", len(body)) + body + sig
    check_true("§14.5 signed vote is 398 bytes", len(VOTE_CONTEXT) == 16 and len(signed_vote) == 398)
    check("§14.10 BLAKE3(signed vote)", blake3.blake3(signed_vote).digest(),
          DIR["BLAKE3(signed vote)"])
    try:
        Ed25519PublicKey.from_public_bytes(body[33:65]).verify(sig, VOTE_CONTEXT + body)
        ok = True
    except Exception:
        ok = False
    check_true("§14.5 the vote verifies under its authority", ok)

    # §14.5 computation from three votes; authority 3 does not give relay A Guard.
    votes = [
        [relay_a, relay_b],
        [dict(relay_a, weight=900_000), dict(relay_b, weight=30_000)],
        [dict(relay_a, flags=0x17, weight=5_000_000), dict(relay_b, weight=10_000)],
    ]
    computed = compute_relays(votes, majority)
    check_true("§14.5 consensus relays computed from the three votes are A and B as given",
               [dir_entry(r) for r in computed] == [entry_b, entry_a])
    check_true("§14.5 a relay listed by one vote of three is left out",
               len(compute_relays([[relay_a], [], []], majority)) == 0)

    # §14.6: the consensus, its digest and signatures.
    # T and T - L are on the same UTC day: the previous consensus's hidden-service SRVs
    # (0x66×32, 0x55×32) are carried (§14.7).
    same_day = t // 86400 == (t - period) // 86400
    check_true("§14.10 T and T - L fall on one UTC day", same_day)
    body = consensus_body(nid, times, srv, previous_srv, (b"\x66" * 32, b"\x55" * 32),
                          next_commits, computed)
    check("§14.10 consensus body", body, DIR["consensus body"])
    check_true("§14.6 consensus body is 190 + 64·3 + 82 + 90 bytes",
               len(body) == 190 + 64 * 3 + 82 + 90 == 554)
    check("§14.10 digest", blake3.blake3(body).digest(), DIR["digest"])
    sigs = [Ed25519PrivateKey.from_private_bytes(s).sign(CONSENSUS_CONTEXT + body)
            for s in seeds[:2]]
    check("§14.10 consensus signature 1", sigs[0], DIR["signature 1"])
    check("§14.10 consensus signature 2", sigs[1], DIR["signature 2"])

    def signed(pairs):
        return (struct.pack(">I", len(body)) + body + bytes([len(pairs)])
                + b"".join(a + s for a, s in pairs))

    both = signed([(auths[0], sigs[0]), (auths[1], sigs[1])])
    check_true("§14.6 signed consensus is 751 bytes",
               len(CONSENSUS_CONTEXT) == 21 and len(both) == 751)
    check("§14.10 BLAKE3(signed consensus)", blake3.blake3(both).digest(),
          DIR["BLAKE3(signed consensus)"])
    accepts = lambda data, now: client_accepts(data, set(auths), nid, now)  # noqa: E731
    check_true("§14.6 accepted at valid_after, 300 s early, and 1 s before valid_until",
               accepts(both, t) and accepts(both, t - 300) and accepts(both, t + 3 * period - 1))
    check_true("§14.6 refused 301 s early and at valid_until",
               not accepts(both, t - 301) and not accepts(both, t + 3 * period))
    check_true("§14.6 one signature, or one signature twice, is too few",
               not accepts(signed([(auths[0], sigs[0])]), t)
               and not accepts(signed([(auths[0], sigs[0])] * 2), t))
    outsider = ed25519_public(b"\x09" * 32)
    outsider_sig = Ed25519PrivateKey.from_private_bytes(b"\x09" * 32).sign(CONSENSUS_CONTEXT + body)
    check_true("§14.6 a signature by a non-authority does not count",
               not accepts(signed([(auths[0], sigs[0]), (outsider, outsider_sig)]), t))
    check_true("§14.6 a consensus for another network is refused",
               not client_accepts(both, set(auths), network_id("other", auths), t))

    # §14.2 message frames.
    def frame(msg, request):
        return (b"\x11" if request else b"") + struct.pack(">I", len(msg)) + msg
    check("§14.10 GET_CONSENSUS frame", frame(b"\x03", True), DIR_FRAMES["GET_CONSENSUS request"])
    check("§14.10 GET_VOTE frame", frame(b"\x07" + struct.pack(">Q", t), True),
          DIR_FRAMES["GET_VOTE request for T"])
    check("§14.10 CONSENSUS (none) frame", frame(b"\x04\x00", False),
          DIR_FRAMES["CONSENSUS answer, none"])
    reason = "timed out".encode()
    check("§14.10 UPLOADED frame", frame(bytes([2, 1, len(reason)]) + reason, False),
          DIR_FRAMES["UPLOADED answer"])
    post = b"\x09" + blake3.blake3(body).digest() + auths[0] + sigs[0]
    check_true("§14.10 POST_SIGNATURE frame is 11 00000081 ‖ …",
               frame(post, True)[:6].hex() == "110000008109" and len(post) == 129)


# ---------------------------------------------------------------- §12.7 HSDir ring

HSDIR = {
    "hsdir_index": "3d7fe54416cb6504acb14ec1b5531289a0c32e16d39b925877403d65ebd5ee57",
    "store_index": "63a666a0a5a36fa0e0b21a59cad5ac3ca418563f2367b838fe4b3eb9ed89b33a",
}


def hsdir_vectors():
    dk = lambda ctx, km: blake3.blake3(km, derive_key_context=ctx).digest()  # noqa: E731
    srv = b"\x02" * 32
    check("§12.7 hsdir_index(0x01×32, 0x02×32)",
          dk("anonnet 2026 hsdir index", b"\x01" * 32 + srv), HSDIR["hsdir_index"])
    check("§12.7 store_index(0x03×32, 1, 0x02×32)",
          dk("anonnet 2026 hs store index", b"\x03" * 32 + bytes([1]) + srv),
          HSDIR["store_index"])

    # The ring rule on a small made-up ring: 12 relays, 2 replicas of 4, none twice.
    nodes = [blake3.blake3(bytes([i])).digest() for i in range(12)]
    ring = sorted((dk("anonnet 2026 hsdir index", n + srv), n) for n in nodes)
    chosen = []
    for r in (1, 2):
        start = dk("anonnet 2026 hs store index", b"\x03" * 32 + bytes([r]) + srv)
        first = next((i for i, (x, _) in enumerate(ring) if x >= start), 0)
        taken = 0
        for step in range(len(ring)):
            n = ring[(first + step) % len(ring)][1]
            if taken == 4:
                break
            if n not in chosen:
                chosen.append(n)
                taken += 1
    check_true("§12.7 eight distinct responsible HSDirs on a ring of 12",
               len(chosen) == 8 == len(set(chosen)))


# ---------------------------------------------------------------- the document

def document_prints_the_vectors():
    doc = pathlib.Path(__file__).resolve().parent.parent / "protocol.md"
    if not doc.exists():
        check_true("docs/protocol.md exists", False)
        return
    flat = re.sub(r"\s+", "", doc.read_text(encoding="utf-8"))
    values = list(HANDSHAKE.values()) + list(HYBRID.values()) + list(HS_NTOR.values()) + [
        ONION_FWD_PREFIX, ONION_FWD_BLAKE3, ONION_BWD_PREFIX, ONION_BWD_BLAKE3,
        DESC_BODY, DESC_SIG, DESC_TEXT,
        "010001000f010b6578616d706c652e636f6d01bb", "010002000704c00002070050",
        "030001000106",
    ] + [v for v in HS.values()] + [DARK["key"], DARK["pow"], DARK["record"]] + [
        v for v in DIR.values()] + [v for v in DIR_FRAMES.values()] + list(HSDIR.values())
    missing = [v for v in values if v not in flat]
    check_true(f"docs/protocol.md prints every vector (missing: {missing})", not missing)


def main():
    handshake_vector()
    hybrid_vector()
    hs_ntor_vector()
    onion_vectors()
    descriptor_vector()
    message_examples()
    hs_vectors()
    hs_pow_vector()
    dark_vector()
    directory_vectors()
    hsdir_vectors()
    document_prints_the_vectors()
    if FAILURES:
        print(f"\n{len(FAILURES)} mismatch(es)")
        return 1
    print("\nall vectors match")
    return 0


if __name__ == "__main__":
    sys.exit(main())
