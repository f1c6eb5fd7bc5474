"""The runtime path works with torch absent: import, load, verify and generate."""

from conftest import run_python

BLOCK_TORCH = "import sys; sys.modules['torch'] = None\n"


def test_runtime_imports_without_torch():
    result = run_python(BLOCK_TORCH + "import edgetx.runtimes, edgetx.bundle, edgetx.verify.parity, edgetx.cli\n"
                        "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]")
    assert result.returncode == 0, result.stderr


def test_generate_and_verify_without_torch(tiny_bundle_master):
    code = BLOCK_TORCH + f"""
from edgetx.bundle import Bundle
from edgetx.verify.parity import verify
from edgetx.runtimes import GenerationConfig, Generator, Session
bundle = Bundle.load({str(tiny_bundle_master)!r})
assert all(r.passed for r in verify(bundle))
text = Generator(Session(bundle)).generate("def ", GenerationConfig(max_new_tokens=8))
print(len(text.encode()))
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) >= 1


def test_build_without_torch_says_what_to_install(tmp_path):
    result = run_python(BLOCK_TORCH + f"from edgetx.cli import main; main(['build', '--out', {str(tmp_path / 'b')!r}])")
    assert result.returncode == 1
    assert "pip install 'edgetx[export]'" in result.stderr and "Traceback" not in result.stderr


def test_explain_onnx_vs_onnx_without_torch(tiny_bundle_master):
    code = BLOCK_TORCH + f"""
from edgetx.bundle import Bundle
from edgetx.verify.explain import explain_bundle
bundle = Bundle.load({str(tiny_bundle_master)!r})
report = explain_bundle(bundle, "fp32", against="fp32")
print(report.diverged, report.compared)
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    diverged, compared = result.stdout.split()
    assert diverged == "False" and int(compared) > 10
