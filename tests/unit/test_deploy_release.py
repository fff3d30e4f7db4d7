"""Deploy runner, pure parts: the container config, and what the image needs from the source."""

from __future__ import annotations

import importlib.metadata
import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from controller.api.deployment import DeploymentSpec
from runners.deploy import runtime_modules
from runners.deploy.release import DeployError, Release, container_config, image_tag


def spec(**fields: Any) -> dict[str, Any]:
    return DeploymentSpec(model="support-assistant@champion", **fields).model_dump()


def test_container_config_follows_the_spec() -> None:
    release = Release(
        "support-assistant",
        "support-assistant@2",
        spec(
            api_key={"env": "LLMOPS_KEY_SUPPORT"},
            limits={"max_tokens": 128, "max_concurrency": 2},
            collect={"enabled": True, "sample_rate": 0.5, "into": "support-feedback"},
        ),
        ["Hi"],
    )
    config = container_config(release, "docker")
    assert config["api_key_env"] == "LLMOPS_KEY_SUPPORT"
    assert config["limits"]["max_tokens"] == 128 and config["limits"]["max_concurrency"] == 2
    assert config["collect"] == {
        "enabled": True,
        "sample_rate": 0.5,
        "redact_pii": True,
        "dir": "/var/lib/llmops/collect/support-feedback",
    }
    assert config["smoke"] == {"prompts": ["Hi"], "max_tokens": 16}
    assert (config["host"], config["port"], config["model_dir"]) == ("0.0.0.0", 8080, "/mnt/models")


@pytest.mark.parametrize("target", ["docker", "kserve"])
def test_slow_client_limits_reach_the_runtime_config(target: str) -> None:
    from runners.serve.config import parse_config

    limits = {"header_timeout_s": 4.5, "read_timeout_s": 12, "max_pending_connections": 32}
    release = Release("a", "m@1", spec(limits={"max_queue": 0, **limits}), [])
    config = container_config(release, target)
    served = parse_config(json.dumps(config), "test").limits
    assert (served.header_timeout_s, served.read_timeout_s) == (4.5, 12.0)
    assert (served.max_pending_connections, served.max_queue) == (32, 0)
    # Unset, they are left out of the config (the spec's dump omits them, so the rendered
    # image and ServingRuntime stay as before) and the runtime's equal defaults apply.
    default = container_config(Release("a", "m@1", spec(), []), target)["limits"]
    assert not set(limits) & set(default)
    runtime = parse_config(json.dumps({**config, "limits": default}), "test").limits
    assert (runtime.header_timeout_s, runtime.read_timeout_s) == (10.0, 30.0)
    assert runtime.max_pending_connections == 128


def test_no_smoke_prompts_leaves_the_runtime_default() -> None:
    from runners.serve.config import parse_config

    config = container_config(Release("a", "m@1", spec(), []), "docker")
    assert "prompts" not in config["smoke"]
    assert parse_config(json.dumps(config), "test").smoke.prompts


def test_llama_cpp_points_at_the_gguf_inside_the_model_folder() -> None:
    release = Release("a", "m@1", spec(runtime="llama-cpp"), [], gguf_file="model.Q4_1.gguf")
    assert container_config(release, "kserve")["gguf_path"] == "/mnt/models/model.Q4_1.gguf"
    with pytest.raises(DeployError, match="needs the GGUF file"):
        Release("a", "m@1", spec(runtime="llama-cpp"), [])


def test_image_tag() -> None:
    assert image_tag(Release("a", "support-assistant@2", spec(), [])) == (
        "llmops/a:support-assistant-2"
    )
    assert image_tag(Release("a", "m@2", spec(docker={"image": "reg.example/x:1"}), [])) == (
        "reg.example/x:1"
    )


def write(root: Path, files: dict[str, str]) -> None:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


TREE = {
    "runners/__init__.py": '"""runners"""\n',
    "runners/serve/__init__.py": "from runners.serve.app import main\n",
    "runners/serve/__main__.py": "from . import app\napp.main()\n",
    "runners/serve/app.py": """
        from __future__ import annotations
        import json
        from typing import TYPE_CHECKING
        import yaml
        from runners.data import steps
        from .backend import load
        if TYPE_CHECKING:
            import pandas
        def main():
            import jinja2
    """,
    "runners/serve/backend.py": """
        def load():
            import torch
            try:
                import llama_cpp
            except ImportError:
                llama_cpp = None
    """,
    "runners/serve/prompts.json": "[]\n",
    "runners/data/__init__.py": "",
    "runners/data/steps.py": """
        import httpx
        def near_duplicates():
            import datasketch
            from runners.data import minhash
    """,
    "runners/data/minhash.py": "import datasketch\n",
    "runners/train/__init__.py": "import peft\n",
}


def test_collect_follows_imports_and_pins_third_party(tmp_path: Path) -> None:
    write(tmp_path, TREE)
    found = runtime_modules.collect(tmp_path, "runners.serve", "transformers")
    assert found.files == [
        "runners/__init__.py",
        "runners/data/__init__.py",
        "runners/data/steps.py",
        "runners/serve/__init__.py",
        "runners/serve/__main__.py",
        "runners/serve/app.py",
        "runners/serve/backend.py",
        "runners/serve/prompts.json",
    ]
    version = importlib.metadata.version
    # torch comes from the CPU index; llama_cpp only into llama-cpp images; pandas only
    # under TYPE_CHECKING; peft only in a module serving does not import.
    assert found.requirements == sorted(
        [
            f"httpx=={version('httpx')}",
            f"Jinja2=={version('jinja2')}",
            f"PyYAML=={version('pyyaml')}",
        ],
        key=str.lower,
    )
    # Lazy imports outside the runtime's package serve code it does not call.
    assert found.left_out == {
        "datasketch": "runners/data/steps.py",
        "runners.data.minhash": "runners/data/steps.py",
    }


def test_llama_cpp_images_pin_llama_cpp_python(tmp_path: Path) -> None:
    # llama-cpp-python is the optional extra `llama-cpp` (an sdist that compiles llama.cpp).
    pytest.importorskip("llama_cpp", reason="the llama-cpp extra is not installed")
    write(tmp_path, TREE)
    llama = runtime_modules.collect(tmp_path, "runners.serve", "llama-cpp").requirements
    version = importlib.metadata.version
    assert f"llama_cpp_python=={version('llama_cpp_python')}" in llama


def test_collect_names_what_cannot_be_pinned(tmp_path: Path) -> None:
    write(tmp_path, TREE | {"runners/serve/extra.py": "import surely_not_installed_here\n"})
    with pytest.raises(DeployError, match=r"runners/serve/extra.py imports 'surely_not_inst"):
        runtime_modules.collect(tmp_path, "runners.serve", "transformers")


def test_collect_needs_the_entry_package(tmp_path: Path) -> None:
    write(tmp_path, {"runners/__init__.py": ""})
    with pytest.raises(DeployError, match="the serving runtime runners.serve is not in"):
        runtime_modules.collect(tmp_path, "runners.serve", "transformers")
