"""Every bundle the suite wrote validates against the bundle format (phi4edge.format). The file is
named to run last: pytest collects test files in name order, so by now every other test's
exports are on disk under this session's temporary folder."""
from __future__ import annotations

import json
from pathlib import PurePosixPath

from phi4edge.format import Manifest


def test_every_bundle_in_this_session_conforms(tmp_path_factory, bundles, two_adapters_bundle, mm_with_adapters):
    """Runs after the exports above and the fixtures': every manifest.json that export wrote under
    this session's temporary folder (those tests edited on purpose are skipped: export writes
    indented JSON, the edits do not) reads as a Manifest, round-trips unchanged and names only
    files inside its bundle, the graphs, adapters and tokenizer among them."""
    found = 0
    for path in sorted(tmp_path_factory.getbasetemp().rglob("manifest.json")):
        text = path.read_text()
        doc = json.loads(text)
        if text != json.dumps(doc, indent=2) + "\n":
            continue
        manifest = Manifest.from_json(doc, str(path))
        assert manifest.to_json() == doc
        for name in manifest.files:   # relative names inside the bundle (files may since have been tampered with)
            assert not PurePosixPath(name).is_absolute() and ".." not in PurePosixPath(name).parts
        graphs = [manifest.decoder.graph] + [p.graph for p in (manifest.vision, manifest.speech) if p]
        assert set(graphs) | {a.file for a in manifest.adapters.values()} | {"tokenizer.json"} <= set(manifest.files)
        found += 1
    assert found >= 3
    print(f"\n{found} bundles written this session conform to the format")
