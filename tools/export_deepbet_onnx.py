"""Re-create the deepbet ONNX files shipped in pipeline/models/deepbet/.

msmri runs the brain-extraction networks of deepbet (Fisch et al., Computers in
Biology and Medicine 2024, doi:10.1016/j.compbiomed.2024.109079; MIT licence) with
onnxruntime, so that the pipeline does not depend on PyTorch. This script is how the
shipped files were made; it is not run by the pipeline or the tests. It needs PyTorch
and deepbet, which msmri itself does not install:

    python -m venv /tmp/export && /tmp/export/bin/pip install torch==2.13.0 onnx deepbet==1.0.2 onnxruntime
    /tmp/export/bin/python tools/export_deepbet_onnx.py pipeline/models/deepbet

For each TorchScript model of the deepbet wheel (``bbox_model.pt``: brain probability on
a 128^3 resampling of the whole image; ``model.pt``: brain probability on a 256^3
resampling of the brain's bounding box) it exports an ONNX graph (opset 17, spatial
axes dynamic), checks it against PyTorch on a random input and writes it gzip-compressed
with a fixed timestamp, so that the files are byte-reproducible.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import sys
from pathlib import Path


def main(out_dir: str) -> None:
    import numpy as np
    import onnxruntime as ort
    import torch
    from deepbet.utils import DATA_PATH

    torch.manual_seed(0)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, size in (("bbox_model", 128), ("model", 64)):
        net = torch.jit.load(f"{DATA_PATH}/models/{name}.pt").eval()
        x = torch.rand(1, 1, size, size, size)
        buf = io.BytesIO()
        torch.onnx.export(
            net, (x,), buf, dynamo=False, opset_version=17,
            input_names=["image"], output_names=["probability"],
            dynamic_axes={"image": {2: "i", 3: "j", 4: "k"}, "probability": {2: "i", 3: "j", 4: "k"}},
        )
        onnx_bytes = buf.getvalue()
        with torch.no_grad():
            ref = net(x).numpy()
        sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
        got = sess.run(None, {"image": x.numpy()})[0]
        err = float(np.abs(ref - got).max())
        if err > 1e-2:
            raise SystemExit(f"{name}: ONNX output differs from PyTorch by {err}")
        target = out / f"{name}.onnx.gz"
        with open(target, "wb") as fh, gzip.GzipFile(fileobj=fh, mode="wb", mtime=0, filename="") as gz:
            gz.write(onnx_bytes)
        sha = hashlib.sha256(target.read_bytes()).hexdigest()
        print(f"{target}: {target.stat().st_size} bytes, sha256 {sha}, max |PyTorch - ONNX| {err:.2e}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "pipeline/models/deepbet")
