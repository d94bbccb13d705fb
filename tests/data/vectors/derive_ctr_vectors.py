#!/usr/bin/env python3
"""Writes aes256_ctr_test.json: AES-256-CTR known answers for the GPU CTR kernel.

Sources:
- NIST SP 800-38A (2001), Appendix F.5.5 (CTR-AES256.Encrypt) and F.5.6 (CTR-AES256.Decrypt):
  copied from the publication, not computed here (the script only checks them with OpenSSL).
- Derived: GCM counter-wrap vectors. GCM increments only the low 32 bits of the counter block
  (SP 800-38D inc32), so a counter block ending in ffffffff is followed by one ending in
  00000000 with the nonce untouched. OpenSSL's CTR mode carries into the nonce instead, so the
  keystream here is built block by block with `openssl enc -aes-256-ecb` (independent of the
  RustCrypto code the Rust tests otherwise compare with) from explicit inc32 counter blocks.

Run from this folder: python3 derive_ctr_vectors.py (needs the openssl CLI).
"""
import hashlib
import json
import subprocess


def ecb(key: bytes, block: bytes) -> bytes:
    out = subprocess.run(
        ["openssl", "enc", "-aes-256-ecb", "-K", key.hex(), "-nopad"],
        input=block, capture_output=True, check=True).stdout
    assert len(out) == 16
    return out


def ctr_inc32(key: bytes, counter: bytes, data: bytes) -> bytes:
    nonce, ctr = counter[:12], int.from_bytes(counter[12:], "big")
    out = bytearray()
    for i in range(0, len(data), 16):
        block = nonce + ((ctr + i // 16) % 2**32).to_bytes(4, "big")
        ks = ecb(key, block)
        out += bytes(a ^ b for a, b in zip(data[i:i + 16], ks))
    return bytes(out)


def det(label: str, n: int) -> bytes:
    """Deterministic filler bytes: SHA-256 in counter mode over a label."""
    out = b""
    i = 0
    while len(out) < n:
        out += hashlib.sha256(f"{label}/{i}".encode()).digest()
        i += 1
    return out[:n]


NIST_KEY = bytes.fromhex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
NIST_CTR = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff")
NIST_PT = bytes.fromhex(
    "6bc1bee22e409f96e93d7e117393172a" "ae2d8a571e03ac9c9eb76fac45af8e51"
    "30c81c46a35ce411e5fbc1191a0a52ef" "f69f2445df4f9b17ad2b417be66c3710")
NIST_CT = bytes.fromhex(
    "601ec313775789a5b7a7f504bbf3d228" "f443e3ca4d62b59aca84e990cacaf5c5"
    "2b0930daa23de94ce87017ba2d84988d" "dfc9c58db67aada613c2dd08457941a6")
# SP 800-38A lists the output (keystream) blocks too; the kernel's single-block AES is checked
# against them.
NIST_OUT = [
    "0bdf7df1591716335e9a8b15c860c502", "5a6e699d536119065433863c8f657b94",
    "1bc12c9c01610d5d0d8bd6a3378eca62", "2956e1c8693536b1bee99c73a31576b6"]

assert ctr_inc32(NIST_KEY, NIST_CTR, NIST_PT) == NIST_CT, "OpenSSL disagrees with SP 800-38A"

tests = [
    {"tcId": 1, "comment": "SP 800-38A F.5.5 CTR-AES256.Encrypt", "direction": "encrypt",
     "key": NIST_KEY.hex(), "counter": NIST_CTR.hex(), "input": NIST_PT.hex(),
     "output": NIST_CT.hex(), "keystreamBlocks": NIST_OUT},
    {"tcId": 2, "comment": "SP 800-38A F.5.6 CTR-AES256.Decrypt", "direction": "decrypt",
     "key": NIST_KEY.hex(), "counter": NIST_CTR.hex(), "input": NIST_CT.hex(),
     "output": NIST_PT.hex(), "keystreamBlocks": NIST_OUT},
]
for tc, (start, length) in enumerate(
        [(0xFFFFFFFF, 16 * 3), (0xFFFFFFFE, 16 * 4 + 5), (0xFFFFFFF0, 16 * 20 + 3),
         (0x00000002, 1), (0x7FFFFFFF, 33)], start=3):
    key = det(f"key{tc}", 32)
    nonce = det(f"nonce{tc}", 12)
    counter = nonce + start.to_bytes(4, "big")
    pt = det(f"pt{tc}", length)
    tests.append({
        "tcId": tc,
        "comment": f"derived: inc32 counter from {start:#010x}, {length} bytes (OpenSSL ECB)",
        "direction": "encrypt", "key": key.hex(), "counter": counter.hex(),
        "input": pt.hex(), "output": ctr_inc32(key, counter, pt).hex()})

doc = {
    "algorithm": "AES-256-CTR (GCM inc32 counter)",
    "sources": [
        "NIST SP 800-38A, Recommendation for Block Cipher Modes of Operation, Appendix F.5.5/F.5.6",
        "derived by derive_ctr_vectors.py with the OpenSSL CLI (AES-256-ECB per counter block)",
    ],
    "numberOfTests": len(tests),
    "tests": tests,
}
with open("aes256_ctr_test.json", "w") as f:
    json.dump(doc, f, indent=1)
    f.write("\n")
print(f"wrote {len(tests)} tests")
