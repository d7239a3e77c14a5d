#!/usr/bin/env python3
"""Regenerate the CSR samples in this directory (checked in; the tests only
read them). Each asks for spiffe://cluster.local/ns/shop/sa/web, as real
clients write a CSR:
  openssl-{subject,empty}.pem  openssl req, with -subj "/CN=web" and "/"
  python-{subject,empty}.pem   Python's cryptography (EC P-256, and RSA-2048
                               for python-rsa-empty.pem), SAN not critical
  go-{subject,empty}.der       DER laid out as Go's x509.CreateCertificateRequest
                               writes it: no NULL in ecdsa-with-SHA256, the
                               extensionRequest attribute, and the SAN marked
                               critical when the subject is empty (RFC 5280
                               4.2.1.6), as Go does
Usage: python3 make-samples.py (needs python3-cryptography and openssl)."""
import os, subprocess, tempfile
from cryptography import x509
from cryptography.x509.oid import NameOID
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

ID = "spiffe://cluster.local/ns/shop/sa/web"
HERE = os.path.dirname(os.path.abspath(__file__))


def write(name, data):
    with open(os.path.join(HERE, name), "wb") as f:
        f.write(data)


def python_csr(key, subject):
    b = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(subject))
    b = b.add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(ID)]), critical=False)
    return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def tlv(tag, body):
    n = len(body)
    if n < 0x80:
        ln = bytes([n])
    elif n < 0x100:
        ln = bytes([0x81, n])
    else:
        ln = bytes([0x82, n >> 8, n & 0xFF])
    return bytes([tag]) + ln + body


def seq(*parts):
    return tlv(0x30, b"".join(parts))


def oid(dotted):
    a = [int(x) for x in dotted.split(".")]
    out = bytes([40 * a[0] + a[1]])
    for v in a[2:]:
        enc = [v & 0x7F]
        v >>= 7
        while v:
            enc.insert(0, 0x80 | (v & 0x7F))
            v >>= 7
        out += bytes(enc)
    return tlv(0x06, out)


def go_csr(key, cn):
    spki = key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    if cn:
        name = seq(tlv(0x31, seq(oid("2.5.4.3"), tlv(0x13, cn.encode()))))
    else:
        name = seq()
    san = seq(tlv(0x86, ID.encode()))  # GeneralNames { uniformResourceIdentifier }
    ext = seq(oid("2.5.29.17"), *([tlv(0x01, b"\xff")] if not cn else []), tlv(0x04, san))
    attr = seq(oid("1.2.840.113549.1.9.14"), tlv(0x31, seq(ext)))
    cri = seq(tlv(0x02, b"\x00"), name, spki, tlv(0xA0, attr))
    sig = key.sign(cri, ec.ECDSA(hashes.SHA256()))
    return seq(cri, seq(oid("1.2.840.10045.4.3.2")), tlv(0x03, b"\x00" + sig))


def main():
    ec1 = ec.generate_private_key(ec.SECP256R1())
    write("python-subject.pem", python_csr(ec1, [x509.NameAttribute(NameOID.COMMON_NAME, "web")]))
    write("python-empty.pem", python_csr(ec1, []))
    write("python-rsa-empty.pem", python_csr(rsa.generate_private_key(65537, 2048), []))
    write("go-subject.der", go_csr(ec1, "web"))
    write("go-empty.der", go_csr(ec1, None))
    with tempfile.TemporaryDirectory() as d:
        k = os.path.join(d, "k.pem")
        subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-out", k], check=True, capture_output=True)
        for name, subj in (("openssl-subject.pem", "/CN=web"), ("openssl-empty.pem", "/")):
            out = os.path.join(HERE, name)
            subprocess.run(["openssl", "req", "-new", "-key", k, "-subj", subj, "-addext",
                            "subjectAltName=URI:" + ID, "-out", out], check=True, capture_output=True)


if __name__ == "__main__":
    main()
