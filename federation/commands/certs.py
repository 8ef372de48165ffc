"""`isthmus certs`: the mesh PKI from the command line (init, cluster, issue, inspect, bundle).

Every verb works on one PKI directory, given with `--dir PKI` or taken from `--config`'s
`[pki] dir`. Each prints what it wrote and where; bad input is a `CertsError` (or
`UsageError`) whose one-line message the CLI prints before exiting 2. The work itself lives
in `certs`; this module only parses, calls and prints.
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from certs import files, pki
from certs.chain import dns_names_of, find_issuer, is_ca, spiffe_ids_of, uris_of, verify_chain
from certs.errors import InvalidCertificate, PkiMissing
from certs.store import TrustBundle, bundle_from_pem, load_bundle, load_identity
from federation.commands._common import add_config_option, add_json_option, add_noun, add_verb, print_json
from federation.errors import UsageError


def add_parser(subparsers, noun: str, help_text: str) -> None:
    verbs = add_noun(subparsers, noun, help_text)

    p = add_verb(verbs, "init", "create the trust domain's root CA and trust bundle", run_init)
    p.add_argument(
        "--trust-domain", metavar="TD", help="e.g. mesh.example (default: --config's trust_domain)"
    )
    _add_dir(p)
    p.add_argument(
        "--key-type", choices=pki.KEY_TYPES, default="ec", help="ECDSA P-256 (default) or RSA 3072"
    )
    p.add_argument(
        "--days", type=_positive_int, default=pki.ROOT_DAYS, help="validity (default: %(default)s)"
    )
    p.add_argument("--force", action="store_true", help="replace an existing root CA")

    p = add_verb(verbs, "cluster", "create a cluster's intermediate CA", run_cluster)
    p.add_argument("name", metavar="NAME", help="cluster name, e.g. east-1")
    p.add_argument("--region", help="e.g. us-east (default: --config's cluster.region)")
    p.add_argument("--zone", help="e.g. us-east-1a (default: --config's first zone)")
    _add_dir(p)
    p.add_argument(
        "--days", type=_positive_int, default=pki.CLUSTER_DAYS, help="validity (default: %(default)s)"
    )
    p.add_argument("--force", action="store_true", help="replace an existing cluster CA")

    p = add_verb(verbs, "issue", "issue a SPIFFE identity (key, cert, chain) from a cluster's CA", run_issue)
    p.add_argument("--cluster", required=True, help="the issuing cluster")
    p.add_argument("--name", required=True, help="workload name, e.g. gateway")
    _add_dir(p)
    p.add_argument("--dns", action="append", default=[], metavar="NAME", help="a DNS SAN (repeatable)")
    p.add_argument(
        "--hours", type=_positive_float, default=pki.IDENTITY_HOURS, help="validity (default: %(default)s)"
    )

    p = add_verb(
        verbs, "inspect", "show a certificate and whether its chain verifies against the bundle", run_inspect
    )
    p.add_argument(
        "file", metavar="FILE", help="a PEM certificate or chain (cert.pem, chain.pem, ca.crt, bundle.pem)"
    )
    _add_dir(p, "the PKI whose bundle to verify against (default: the PKI that holds FILE)")
    add_json_option(p)

    p = add_verb(verbs, "bundle", "show the trust bundle, or add a root to it (root rotation)", run_bundle)
    _add_dir(p)
    p.add_argument("--add", metavar="ROOT.pem", help="add this root CA certificate to the bundle")
    p.add_argument(
        "--remove",
        metavar="SHA256",
        help="remove the root whose SHA-256 fingerprint starts with this (8+ hex digits)",
    )
    add_json_option(p)


def _add_dir(parser: argparse.ArgumentParser, help_text: str = "the PKI directory") -> None:
    parser.add_argument("--dir", metavar="PKI", help=f"{help_text}; default: --config's [pki] dir")
    add_config_option(parser)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number")
    return value


def _config(args: argparse.Namespace):
    if not getattr(args, "config", None):
        return None
    from federation.config import ClusterConfig

    return ClusterConfig.from_toml(args.config)


def _pki_dir(args: argparse.Namespace, *, required: bool = True) -> Path | None:
    if args.dir:
        return Path(args.dir)
    config = _config(args)
    if config is not None:
        return config.pki_dir
    if required:
        raise UsageError("certs: --dir PKI (or --config CLUSTER.TOML) is needed")
    return None


def _when(value: dt.datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC")


def _key_description(cert: x509.Certificate) -> str:
    key = cert.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        return {"secp256r1": "ECDSA P-256", "secp384r1": "ECDSA P-384"}.get(
            key.curve.name, f"ECDSA {key.curve.name}"
        )
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA {key.key_size}"
    return type(key).__name__


def _wrote(path: Path, what: str, mode: str = "") -> None:
    print(f"  wrote {path}  ({what}{', mode ' + mode if mode else ''})")


# --------------------------------------------------------------------------------------------- verbs


def run_init(args: argparse.Namespace) -> int:
    pki_dir = _pki_dir(args)
    trust_domain = args.trust_domain
    if trust_domain is None:
        config = _config(args)
        if config is None:
            raise UsageError("certs init: --trust-domain TD is needed (or --config CLUSTER.TOML)")
        trust_domain = config.trust_domain
    ca = pki.init_root(pki_dir, trust_domain, key_type=args.key_type, days=args.days, force=args.force)
    bundle = load_bundle(pki_dir)
    print(
        f"root CA for trust domain {ca.trust_domain} ({_key_description(ca.cert)}, "
        f"valid until {_when(ca.cert.not_valid_after_utc)}, name-constrained to URI host {ca.trust_domain})"
    )
    _wrote(ca.cert_path, "root CA certificate")
    _wrote(ca.key_path, "root CA private key", "0600")
    kept = len(bundle.roots) - 1
    _wrote(
        bundle.path,
        f"trust bundle, {len(bundle.roots)} root(s)"
        + (f"; {kept} previous root(s) kept for rotation" if kept else ""),
    )
    stale = [
        c
        for c in pki.list_clusters(pki_dir)
        if find_issuer(pki.load_cluster_ca(pki_dir, c).cert, [ca.cert]) is None
    ]
    if stale:
        print(
            f"  cluster CAs still signed by a previous root: {', '.join(stale)} "
            f"(re-create each with `isthmus certs cluster NAME --force --dir {pki_dir}`)"
        )
    return 0


def run_cluster(args: argparse.Namespace) -> int:
    pki_dir = _pki_dir(args)
    region, zone = args.region, args.zone
    if region is None or zone is None:
        config = _config(args)
        if config is not None and config.cluster.name == args.name:
            region = region or config.cluster.region
            zone = zone or config.cluster.zones[0]
    if not region or not zone:
        raise UsageError(f"certs cluster {args.name}: --region and --zone are needed")
    ca = pki.create_cluster_ca(pki_dir, args.name, region=region, zone=zone, days=args.days, force=args.force)
    spiffe = spiffe_ids_of(ca.cert)[0]
    print(
        f"cluster CA {args.name} ({region}/{zone}): {spiffe}, {_key_description(ca.cert)}, "
        f"valid until {_when(ca.cert.not_valid_after_utc)}, signed by the {ca.trust_domain} root"
    )
    _wrote(ca.cert_path, "cluster CA certificate, path length 0")
    _wrote(ca.key_path, "cluster CA private key", "0600")
    _wrote(ca.cert_path.parent / "cluster.json", "region and zone")
    return 0


def run_issue(args: argparse.Namespace) -> int:
    pki_dir = _pki_dir(args)
    directory = pki.issue_identity(pki_dir, args.cluster, args.name, dns_names=args.dns, hours=args.hours)
    identity = load_identity(pki_dir, args.cluster, args.name)
    dns = f", DNS {', '.join(identity.dns_names)}" if identity.dns_names else ""
    print(
        f"identity {identity.spiffe_id}{dns}: serverAuth+clientAuth, valid "
        f"{_when(identity.not_before)} .. {_when(identity.not_after)}"
    )
    _wrote(directory / "key.pem", "private key", "0600")
    _wrote(directory / "cert.pem", "certificate")
    _wrote(directory / "chain.pem", f"certificate + cluster CA {args.cluster}")
    return 0


def _find_pki_dir(start: Path) -> Path | None:
    """The PKI directory holding `start`: the nearest parent with a bundle.pem."""
    for parent in [start.parent, *start.parent.parents]:
        if files.bundle_path(parent).is_file():
            return parent
    return None


def describe(cert: x509.Certificate, now: dt.datetime) -> dict[str, Any]:
    ids = spiffe_ids_of(cert)
    try:
        path_length = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length
    except x509.ExtensionNotFound:
        path_length = None
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": f"{cert.serial_number:x}",
        "spiffe_id": str(ids[0]) if ids else None,
        "uri_sans": uris_of(cert),
        "dns_sans": dns_names_of(cert),
        "is_ca": is_ca(cert),
        "path_length": path_length,
        "key": _key_description(cert),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "days_left": round((cert.not_valid_after_utc - now).total_seconds() / 86400, 2),
        "sha256": cert.fingerprint(hashes.SHA256()).hex(),
    }


def run_inspect(args: argparse.Namespace) -> int:
    path = Path(args.file)
    certs = files.load_certificates(path, "certificate")
    now = dt.datetime.now(dt.UTC)
    pki_dir = _pki_dir(args, required=False) or _find_pki_dir(path.resolve())
    bundle: TrustBundle | None = None
    verdict: dict[str, Any] = {
        "verifies": None,
        "detail": "no trust bundle found (pass --dir PKI)",
        "bundle": None,
    }
    if pki_dir is not None:
        bundle = load_bundle(pki_dir)
        pool = list(certs[1:])
        # A lone cert.pem: its cluster CA is in the PKI directory.
        if find_issuer(certs[0], pool + list(bundle.roots)) is None:
            for ca_path in sorted((Path(pki_dir) / "clusters").glob("*/ca.crt")):
                pool += files.load_certificates(ca_path, "cluster CA certificate")
        report = verify_chain([certs[0], *pool], bundle.roots, now)
        verdict = {"verifies": report.ok, "detail": report.detail, "bundle": str(bundle.path)}
    info = {"file": str(path), **describe(certs[0], now), "certificates_in_file": len(certs), **verdict}
    if args.json:
        print_json(info)
        return 0
    rows = [
        ("file", f"{path} ({len(certs)} certificate(s))"),
        ("subject", info["subject"]),
        ("issuer", info["issuer"]),
        ("SPIFFE ID", info["spiffe_id"] or "none"),
        ("URI SANs", ", ".join(info["uri_sans"]) or "none"),
        ("DNS SANs", ", ".join(info["dns_sans"]) or "none"),
        ("kind", ("CA, path length " + str(info["path_length"])) if info["is_ca"] else "leaf"),
        ("key", info["key"]),
        ("valid", f"{_when(certs[0].not_valid_before_utc)} .. {_when(certs[0].not_valid_after_utc)}"),
        ("days left", f"{info['days_left']:.2f}"),
        ("sha256", info["sha256"]),
    ]
    if verdict["verifies"] is None:
        rows.append(("chain", verdict["detail"]))
    else:
        rows.append(
            (
                "chain",
                f"{'OK' if verdict['verifies'] else 'FAILS'}: {verdict['detail']} (bundle {verdict['bundle']})",
            )
        )
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0 if verdict["verifies"] is not False else 1


def run_bundle(args: argparse.Namespace) -> int:
    pki_dir = _pki_dir(args)
    bundle = load_bundle(pki_dir)
    if args.add and args.remove:
        raise UsageError("certs bundle: --add and --remove cannot be combined")
    if args.remove:
        bundle = _remove_root(pki_dir, bundle, args.remove)
    if args.add:
        add_path = Path(args.add)
        new = files.load_certificates(add_path, "root CA certificate")
        for cert in new:
            if not is_ca(cert) or find_issuer(cert, [cert]) is None:
                raise InvalidCertificate(
                    f"{add_path}: {cert.subject.rfc4514_string()} is not a self-signed root CA"
                )
        known = {c.fingerprint(hashes.SHA256()) for c in bundle.roots}
        added = [c for c in new if c.fingerprint(hashes.SHA256()) not in known]
        roots = [*bundle.roots, *added]
        pem = files.cert_pem(*roots)
        bundle = bundle_from_pem(pem, f"{add_path} added to {bundle.path}", bundle.path)
        if bundle.path is None:
            raise PkiMissing(f"{pki_dir}: no bundle.pem")
        files.write_files([(bundle.path, pem, files.PUBLIC_MODE)])
        print(f"added {len(added)} root(s) from {add_path} ({len(new) - len(added)} already there)")
        _wrote(bundle.path, f"trust bundle, {len(roots)} root(s)")
    now = dt.datetime.now(dt.UTC)
    roots = [describe(c, now) for c in bundle.roots]
    if args.json:
        print_json({"bundle": str(bundle.path), "trust_domain": bundle.trust_domain, "roots": roots})
        return 0
    if not (args.add or args.remove):
        print(f"trust bundle {bundle.path}: trust domain {bundle.trust_domain}, {len(roots)} root(s)")
    for root in roots:
        print(
            f"  {root['subject']}  {root['key']}  until {root['not_after']}  ({root['days_left']:.0f} days)  sha256 {root['sha256'][:16]}"
        )
    return 0


def _remove_root(pki_dir: Path, bundle: TrustBundle, prefix: str) -> TrustBundle:
    prefix = prefix.lower().replace(":", "")
    if len(prefix) < 8 or any(ch not in "0123456789abcdef" for ch in prefix):
        raise UsageError(
            f"certs bundle --remove {prefix!r}: give at least 8 hex digits of a SHA-256 fingerprint"
        )
    matches = [c for c in bundle.roots if c.fingerprint(hashes.SHA256()).hex().startswith(prefix)]
    if len(matches) != 1:
        raise UsageError(f"certs bundle --remove {prefix}: {len(matches)} roots in {bundle.path} match")
    current = pki.load_root(pki_dir).cert
    if matches[0] == current:
        raise UsageError(f"certs bundle --remove {prefix}: that is the current root ({pki_dir}/root/ca.crt)")
    roots = [c for c in bundle.roots if c != matches[0]]
    pem = files.cert_pem(*roots)
    files.write_files([(bundle.path, pem, files.PUBLIC_MODE)])
    print(f"removed {matches[0].subject.rfc4514_string()} (sha256 {prefix}...)")
    _wrote(bundle.path, f"trust bundle, {len(roots)} root(s)")
    return bundle_from_pem(pem, str(bundle.path), bundle.path)
