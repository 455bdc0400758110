"""Does this node's copy of the training data match the parameter server's?

On several machines every node reads the shard paths the PS sent, from a shared filesystem or
from a local copy. A copy that differs (another version of the data set, a truncated download)
would silently train on other data, so a worker checks its copy before its first step: the
manifest beside its shards must have the PS's content hash, and each shard it reads must exist
with the size that manifest lists. Remote shards are checked the same way from this node: the
manifest beside their URLs, and the size the server reports (a pipe: shard has no size to ask).
"""

from __future__ import annotations

import http.client
import json
import os

from .data import Split
from .remote import HTTP, is_pipe, manifest_location, read_small, shard_name, stat_http, why


def local_copy_problem(split: Split, shards: list[str]) -> str | None:
    """None if this node's copy of `shards` matches the PS's manifest, else one readable sentence."""
    expected = split.manifest.get("content_hash")
    manifest_path = manifest_location(shards[0]) if shards else split.manifest_path
    try:
        local = json.loads(read_small(manifest_path))
    except (OSError, ValueError) as exc:
        return (f"cannot read this node's data manifest {manifest_path} ({why(exc)}). Fix: copy the "
                "shard set (with its manifest.json) to the same path on every node.")
    if local.get("content_hash") != expected:
        return (f"this node's data differs from the parameter server's: {manifest_path} has "
                f"content hash {str(local.get('content_hash'))[:12]}, the PS's has "
                f"{str(expected)[:12]}. Fix: copy the PS's shard set to this node.")
    sizes = {s["name"]: s.get("bytes") for s in split.manifest.get("shards", [])}
    for url in shards:
        want = sizes.get(shard_name(url))
        if is_pipe(url):
            continue
        if url.startswith(HTTP):
            try:
                have = stat_http(url).size
            except (OSError, ValueError, http.client.HTTPException) as exc:
                return (f"shard {url} cannot be reached from this node ({why(exc)}). Fix: let this "
                        "node reach the shard server.")
        elif not os.path.isfile(url):
            return f"shard {url} is missing on this node. Fix: copy the PS's shard set to this node."
        else:
            have = os.path.getsize(url)
        if want is not None and have is not None and have != want:
            return (f"shard {url} is {have} bytes on this node but the manifest says {want}. "
                    "Fix: copy the PS's shard set to this node again.")
    return None
