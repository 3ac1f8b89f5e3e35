#!/usr/bin/env python3
"""Writes daemon/apiserver/src/proto_table.rs: Kubernetes' protobuf encoding of the served API
groups as a table the apiserver's one generic decoder walks (`application/vnd.kubernetes.protobuf`
request bodies, which client-go's typed clients and so kubectl send).

Each row is a message field: (message, field number, JSON name, type, flags). The numbers and
types come from the packages' generated.proto; the JSON side (name, `,inline`, pointer or
`omitempty`, which decide whether a zero value appears in JSON) from the Go types the protos were
generated from, so a decoded body is the JSON that the real apiserver would see.

Usage:
    python3 xtask/gen/k8s_proto.py /path/to/kubernetes-api /path/to/kubernetes-apimachinery \
        > daemon/apiserver/src/proto_table.rs
"""
import re
import subprocess
import sys

API = ["core/v1", "apps/v1", "batch/v1", "coordination/v1", "discovery/v1", "rbac/v1",
       "certificates/v1", "policy/v1", "authentication/v1", "authorization/v1", "autoscaling/v1",
       "networking/v1", "events/v1", "storage/v1", "scheduling/v1", "node/v1",
       "admissionregistration/v1"]
MACHINERY = ["pkg/apis/meta/v1", "pkg/runtime", "pkg/util/intstr", "pkg/api/resource"]

REPEATED, INLINE, KEEP_ZERO = 1, 2, 4


def git(repo, *args):
    return subprocess.run(["git", "-C", repo, *args], check=True, capture_output=True,
                          text=True).stdout


def short(proto_pkg):
    """k8s.io.api.core.v1 -> core.v1; k8s.io.apimachinery.pkg.apis.meta.v1 -> meta.v1."""
    for p in ("k8s.io.api.", "k8s.io.apimachinery.pkg.apis.", "k8s.io.apimachinery.pkg.util.",
              "k8s.io.apimachinery.pkg.api.", "k8s.io.apimachinery.pkg."):
        if proto_pkg.startswith(p):
            return proto_pkg[len(p):]
    raise SystemExit(f"unknown proto package {proto_pkg}")


def go_fields(text):
    """struct name -> {proto name: (json name, inline, keep zero)}; and slice alias types."""
    out = {}
    for m in re.finditer(r'^type (\w+) struct \{\n(.*?)^\}', text, re.M | re.S):
        fields = {}
        for line in m.group(2).split("\n"):
            fm = re.match(r'\s*([^`/]+?)\s*`([^`]*)`', line)
            if not fm:
                continue
            tokens, tags = fm.group(1).split(), fm.group(2)
            if "protobuf:" not in tags:
                continue
            pm = re.search(r'protobuf:"[^"]*name=(\w+)', tags)
            gotype = tokens[-1]
            # An embedded struct's proto field is named after its type when the tag has no name.
            pname = pm.group(1) if pm else gotype.lstrip("*").split(".")[-1]
            pname = pname if pm else pname[0].lower() + pname[1:]
            jm = re.search(r'json:"([^"]*)"', tags)
            jparts = (jm.group(1) if jm else "").split(",")
            jname = jparts[0]
            inline = jname == "" or "inline" in jparts[1:]
            keep = gotype.startswith("*") or "omitempty" not in jparts[1:]
            fields[pname] = (jname, inline, keep)
        out[m.group(1)] = fields
    lists = set(re.findall(r'^type (\w+) \[\]\w+\s*$', text, re.M))
    return out, lists


def main():
    api, machinery = sys.argv[1], sys.argv[2]
    sources = [(api, p) for p in API] + [(machinery, p) for p in MACHINERY]
    rows, lists, messages = [], set(), set()
    for repo, pkg in sources:
        proto = git(repo, "show", f"HEAD:{pkg}/generated.proto")
        prefix = short(re.search(r'^package ([\w.]+);', proto, re.M).group(1))
        gotext = ""
        for f in git(repo, "ls-tree", "--name-only", "HEAD", f"{pkg}/").split():
            base = f.rsplit("/", 1)[-1]
            if f.endswith(".go") and not f.endswith("_test.go") and not base.startswith(
                    ("zz_", "generated")) and "swagger" not in base:
                gotext += git(repo, "show", f"HEAD:{f}") + "\n"
        structs, aliases = go_fields(gotext)
        for m in re.finditer(r'^message (\w+) \{\n(.*?)^\}', proto, re.M | re.S):
            msg = f"{prefix}.{m.group(1)}"
            messages.add(msg)
            if msg in SPECIAL:
                continue
            if m.group(1) in aliases:
                lists.add(msg)
            go = structs.get(m.group(1), {})
            for line in m.group(2).split("\n"):
                fm = re.match(r'\s*(optional|repeated)?\s*(map<[^>]+>|[\w.]+) (\w+) = (\d+);', line)
                if not fm:
                    continue
                label, ty, name, num = fm.groups()
                ty = ty.replace(" ", "")
                if ty.startswith("map<"):
                    k, v = ty[4:-1].split(",")
                    ty = f"map:{k}:{qualify(v, prefix)}"
                else:
                    ty = qualify(ty, prefix)
                jname, inline, keep = go.get(name, (name, False, False))
                if name not in go and msg not in lists:
                    print(f"warning: {msg}.{name} has no Go field", file=sys.stderr)
                flags = (REPEATED if label == "repeated" else 0) | (INLINE if inline else 0) | (
                    KEEP_ZERO if keep else 0)
                rows.append((msg, int(num), jname, ty, flags))
    for msg, _, _, ty, _ in rows:
        t = ty.split(":")[-1]
        if t not in SCALARS and t not in messages:
            print(f"warning: {msg} refers to unknown message {t}", file=sys.stderr)
    rows.sort()
    print("// Generated by xtask/gen/k8s_proto.py from k8s.io/api and k8s.io/apimachinery; do not edit.")
    print("//! (message, field number, JSON name, type, flags: 1 repeated, 2 inline, 4 keep a zero value)")
    print()
    print("#[rustfmt::skip]")
    print("pub static FIELDS: &[(&str, u32, &str, &str, u8)] = &[")
    for r in rows:
        print(f'    ("{r[0]}", {r[1]}, "{r[2]}", "{r[3]}", {r[4]}),')
    print("];")
    print()
    print("/// Messages that stand for a Go slice type: their JSON is the array of field 1.")
    print("pub static LISTS: &[&str] = &[")
    for m in sorted(lists):
        print(f'    "{m}",')
    print("];")


# Decoded by hand in k8s_proto.rs: their JSON is not an object of their fields.
SPECIAL = {"meta.v1.Time", "meta.v1.MicroTime", "meta.v1.Duration", "meta.v1.FieldsV1",
           "intstr.IntOrString", "resource.Quantity", "resource.QuantityValue",
           "runtime.RawExtension", "runtime.Unknown", "runtime.TypeMeta", "core.v1.List",
           "meta.v1.List"}
SCALARS = {"string", "int32", "int64", "bool", "double", "float", "bytes"}


def qualify(ty, prefix):
    if ty in SCALARS:
        return ty
    ty = ty.lstrip(".")
    if ty.startswith("k8s.io."):
        pkg, name = ty.rsplit(".", 1)
        return f"{short(pkg)}.{name}"
    return f"{prefix}.{ty}"


main()
