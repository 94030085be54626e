import subprocess
import sys


def test_serving_imports_without_torch(tiny_export):
    code = (
        "import sys\n"
        "import serving.service, serving.engine, serving.preprocess, serving.manifest\n"
        "from serving.engine import OnnxClassifier\n"
        f"OnnxClassifier({str(tiny_export)!r})\n"
        "loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "print(','.join(loaded))\n"
        "sys.exit(1 if loaded else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"torch modules imported: {result.stdout} {result.stderr[-2000:]}"
