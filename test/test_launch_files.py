"""Static checks of the launch files (the `launch` package is not installed here): every Node's
executable is a console script of setup.py (or rviz2), node names are the ones the code uses,
every parameter they set is declared by that node, and config/gst.yaml / gst.rviz agree with
the node's parameters and topics."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

pytest.importorskip("rclpy")

from gst_ros.ros import params as gst_params  # noqa: E402
from gst_ros.ros import sim_camera_node  # noqa: E402
from gst_ros.ros.gst_node import NODE_NAME  # noqa: E402
from gst_ros.ros.stack import SIM_NODE_NAME  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DECLARED = {"gst_node": set(gst_params.BY_NAME), "sim_camera_node": set(sim_camera_node.PARAMETERS)}
NAMES = {"gst_node": NODE_NAME, "sim_camera_node": SIM_NODE_NAME}


def console_scripts() -> dict[str, str]:
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values):
                if isinstance(k, ast.Constant) and k.value == "console_scripts":
                    return dict(s.value.split(" = ") for s in v.elts)
    raise AssertionError("setup.py declares no console_scripts")


def launch_nodes(path: Path) -> list[dict]:
    """Keyword arguments of every Node(...) call; literal values evaluated, others kept as AST."""
    out = []
    for call in ast.walk(ast.parse(path.read_text())):
        if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "Node":
            kw = {}
            for k in call.keywords:
                try:
                    kw[k.arg] = ast.literal_eval(k.value)
                except ValueError:
                    kw[k.arg] = k.value
            out.append(kw)
    return out


def parameter_names(params) -> set[str]:
    """Keys of the dict literals in a Node's `parameters=[...]` list (file paths are skipped)."""
    names = set()
    elts = params.elts if isinstance(params, ast.List) else []
    for e in elts:
        if isinstance(e, ast.Dict):
            names |= {k.value for k in e.keys}
    if isinstance(params, list):
        for e in params:
            if isinstance(e, dict):
                names |= set(e)
    return names


@pytest.mark.parametrize("launch_file", ["gst.launch.py", "sim.launch.py"])
def test_launch_file_nodes_match_setup_and_declared_parameters(launch_file):
    scripts = console_scripts()
    nodes = launch_nodes(ROOT / "launch" / launch_file)
    assert nodes, f"{launch_file} starts no Node"
    for n in nodes:
        assert n["package"] in ("gst_ros", "rviz2")
        if n["package"] == "rviz2":
            assert n["executable"] == "rviz2"
            continue
        exe = n["executable"]
        assert exe in scripts, f"{launch_file}: executable {exe!r} is not a console script of setup.py"
        module = scripts[exe].split(":")[0]
        assert (ROOT / (module.replace(".", "/") + ".py")).is_file(), f"{exe} -> {module} does not exist"
        assert n["name"] == NAMES[exe]
        unknown = parameter_names(n["parameters"]) - DECLARED[exe]
        assert not unknown, f"{launch_file}: {exe} gets undeclared parameters {sorted(unknown)}"


def test_gst_launch_loads_the_config_and_remaps_the_camera():
    src = (ROOT / "launch" / "gst.launch.py").read_text()
    assert '"config", "gst.yaml"' in src
    node = launch_nodes(ROOT / "launch" / "gst.launch.py")[0]
    remapped = {ast.literal_eval(t.elts[0]) for t in node["remappings"].elts}
    cfg = yaml.safe_load((ROOT / "config" / "gst.yaml").read_text())["gst_node"]["ros__parameters"]
    cam = cfg["cameras"][0]
    assert remapped == {f"{cam}/{cfg['image_topic']}", f"{cam}/{cfg['image_topic']}/compressed",
                        f"{cam}/{cfg['camera_info_topic']}"}
    assert "image_transport" in parameter_names(node["parameters"])


def test_sim_launch_wires_the_camera_to_the_node():
    nodes = {n["executable"]: n for n in launch_nodes(ROOT / "launch" / "sim.launch.py")}
    sim = nodes["sim_camera_node"]["parameters"][0]
    gst_params_dict = next(e for e in nodes["gst_node"]["parameters"].elts if isinstance(e, ast.Dict))
    cams = ast.literal_eval(gst_params_dict.values[[k.value for k in gst_params_dict.keys].index("cameras")])
    cfg = yaml.safe_load((ROOT / "config" / "gst.yaml").read_text())["gst_node"]["ros__parameters"]
    assert sim["image_topic"] == f"{cams[0]}/{cfg['image_topic']}"
    assert sim["camera_info_topic"] == f"{cams[0]}/{cfg['camera_info_topic']}"
    assert "-d" in nodes["rviz2"]["arguments"].elts[0].value


def test_config_yaml_matches_declared_parameters():
    cfg = yaml.safe_load((ROOT / "config" / "gst.yaml").read_text())
    assert set(cfg) == {"gst_node"}
    values = cfg["gst_node"]["ros__parameters"]
    assert set(values) == set(gst_params.BY_NAME), "config/gst.yaml must list every declared parameter"
    for name, v in values.items():
        p = gst_params.BY_NAME[name]
        assert type(v) is type(p.default), f"{name}: yaml {type(v).__name__} vs {type(p.default).__name__}"
        if p.range is not None:
            assert p.range[0] <= v <= p.range[1], f"{name}={v} outside {p.range}"
    assert values["autostart"] is False, "real use drives the lifecycle; the demo/stack set autostart"


def test_rviz_config_shows_the_node_outputs():
    rviz = yaml.safe_load((ROOT / "config" / "gst.rviz").read_text())
    vm = rviz["Visualization Manager"]
    assert vm["Global Options"]["Fixed Frame"] == gst_params.BY_NAME["reference_frame"].default
    topics = {d["Topic"]["Value"] for d in vm["Displays"] if "Topic" in d}
    classes = {d["Class"] for d in vm["Displays"]}
    assert {"/gst/markers", "/gst/candidate_0/image", "/gst/camera/pose", "/gst/goal_view/image",
            "/gst/goal_view/spread", "/gst/goal_view/sample", "/gst/goal_view/observation"} <= topics
    assert "rviz_default_plugins/TF" in classes
