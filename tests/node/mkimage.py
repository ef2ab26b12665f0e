#!/usr/bin/env python3
"""Write an OCI image-layout tarball (for `ctr -n k8s.io image import`) holding one or more
single-layer linux/amd64 images built from local files. No registry, no network, stdlib only.

usage: mkimage.py OUT.tar NAME=ENTRY:SRC[,SRC...] [NAME=ENTRY:SRC[,...] ...]

  NAME   full image reference, e.g. localhost/busybox:ci (containerd names the image from the
         io.containerd.image.name annotation)
  ENTRY  the image's entrypoint: a path inside the image
  SRC    host_path[@path_in_image]  a file (parent directories are created), or
         /link_in_image->target      a symlink
The layer always gets the mount points /proc /sys /dev /etc /tmp /run /var. Timestamps are zeroed
so the same inputs give the same digests (and a re-import is a no-op)."""
import hashlib
import io
import json
import os
import stat
import sys
import tarfile

MOUNT_POINTS = ("proc", "sys", "dev", "etc", "tmp", "run", "var")


def blob(files, data):
    digest = hashlib.sha256(data).hexdigest()
    files["blobs/sha256/" + digest] = data
    return "sha256:" + digest, len(data)


def add_dirs(t, dirs, path):
    parts = path.split("/")[:-1]
    for i in range(1, len(parts) + 1):
        d = "/".join(parts[:i])
        if d and d not in dirs:
            ti = tarfile.TarInfo(d)
            ti.type = tarfile.DIRTYPE
            ti.mode = 0o755
            t.addfile(ti)
            dirs.add(d)


def layer(srcs):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        dirs, seen = set(), set()
        for s in srcs:
            if not s:
                continue
            if "->" in s:  # symlink: /path/in/image->target
                dst, _, target = s.partition("->")
                dst = dst.strip("/")
                if dst in seen:
                    continue
                add_dirs(t, dirs, dst)
                ti = tarfile.TarInfo(dst)
                ti.type = tarfile.SYMTYPE
                ti.linkname = target
                t.addfile(ti)
                seen.add(dst)
                continue
            host, _, dst = s.partition("@")
            dst = (dst or host).strip("/")
            if dst in seen:
                continue
            add_dirs(t, dirs, dst)
            st = os.stat(host)  # follows symlinks: the file's content goes in under dst
            ti = tarfile.TarInfo(dst)
            ti.size = st.st_size
            ti.mode = stat.S_IMODE(st.st_mode)
            ti.mtime = 0
            with open(host, "rb") as f:
                t.addfile(ti, f)
            seen.add(dst)
        for d in MOUNT_POINTS:
            if d not in dirs and d not in seen:
                ti = tarfile.TarInfo(d)
                ti.type = tarfile.DIRTYPE
                ti.mode = 0o1777 if d == "tmp" else 0o755
                t.addfile(ti)
    return buf.getvalue()


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    out, specs = sys.argv[1], sys.argv[2:]
    files, manifests = {}, []
    for spec in specs:
        name, _, rest = spec.partition("=")
        entry, _, srcs = rest.partition(":")
        if not name or not entry.startswith("/"):
            sys.exit("bad image spec %r\n%s" % (spec, __doc__))
        ldata = layer(srcs.split(","))
        ldig, lsize = blob(files, ldata)
        cfg = {"architecture": "amd64", "os": "linux",
               "created": "1970-01-01T00:00:00Z",
               "config": {"Entrypoint": [entry], "Env": ["PATH=/usr/local/bin:/usr/bin:/bin"],
                          "WorkingDir": "/"},
               "rootfs": {"type": "layers", "diff_ids": [ldig]},
               "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "tests/node/mkimage.py"}]}
        cdig, csize = blob(files, json.dumps(cfg, separators=(",", ":")).encode())
        man = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
               "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                          "digest": cdig, "size": csize},
               "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                           "digest": ldig, "size": lsize}]}
        mdig, msize = blob(files, json.dumps(man, separators=(",", ":")).encode())
        last = name.rsplit("/", 1)[-1]
        tag = last.rsplit(":", 1)[1] if ":" in last else "latest"
        manifests.append({"mediaType": "application/vnd.oci.image.manifest.v1+json",
                          "digest": mdig, "size": msize,
                          "platform": {"architecture": "amd64", "os": "linux"},
                          "annotations": {"io.containerd.image.name": name,
                                          "org.opencontainers.image.ref.name": tag}})
    files["oci-layout"] = b'{"imageLayoutVersion":"1.0.0"}'
    files["index.json"] = json.dumps({"schemaVersion": 2,
                                      "mediaType": "application/vnd.oci.image.index.v1+json",
                                      "manifests": manifests}).encode()
    with tarfile.open(out + ".tmp", "w") as t:
        for p in ["oci-layout", "index.json"] + sorted(k for k in files if k.startswith("blobs/")):
            ti = tarfile.TarInfo(p)
            ti.size = len(files[p])
            ti.mode = 0o644
            t.addfile(ti, io.BytesIO(files[p]))
    os.replace(out + ".tmp", out)


main()
