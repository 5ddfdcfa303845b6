"""ImagePolicy on a simulated node's files: every way a tenant's image.path could reach a file
outside the image directories, tried with real files, symlinks and qemu-img."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
from pathlib import Path, PurePosixPath

import pytest

from qatvm.agent.config import AgentConfig
from qatvm.node.images import ImageMissing, ImagePolicy, ImageRefused

IMAGES = "/var/lib/qatvm/images"
SECRET = b"root:$y$secret-hash:19000:0:99999:7:::\n"


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A node: an image directory with one good image, another VM's files, a secret in /etc."""
    node = tmp_path / "node"
    (node / IMAGES.lstrip("/")).mkdir(parents=True)
    qemu_img("create", "-q", "-f", "qcow2", str(node / IMAGES.lstrip("/") / "base.qcow2"), "16M")
    other_vm = node / "var/lib/qatvm/vms/qatvm-team-b_db"
    other_vm.mkdir(parents=True)
    qemu_img("create", "-q", "-f", "qcow2", str(other_vm / "overlay.qcow2"), "16M")
    (other_vm / "cidata.iso").write_bytes(b"password: hunter2\n")
    (node / "etc").mkdir()
    (node / "etc/shadow").write_bytes(SECRET)
    return node


def policy(root: Path, *dirs: str) -> ImagePolicy:
    return AgentConfig(node="n", host_root=root, image_dirs=tuple(PurePosixPath(d) for d in dirs or (IMAGES,))).images


def images(root: Path) -> Path:
    return root / IMAGES.lstrip("/")


def test_an_image_in_the_image_directory_is_admitted_with_its_format(root: Path) -> None:
    admitted = policy(root).admit(f"{IMAGES}/base.qcow2")
    assert admitted.host_path == images(root) / "base.qcow2"
    assert (admitted.node_path, admitted.format) == (PurePosixPath(f"{IMAGES}/base.qcow2"), "qcow2")


@pytest.mark.parametrize(
    ("path", "resolved"),
    [
        ("/etc/shadow", None),
        (f"{IMAGES}/../../../../../../../../etc/shadow", "/etc/shadow"),
        ("/var/lib/qatvm/vms/qatvm-team-b_db/overlay.qcow2", None),
        ("/var/lib/qatvm/vms/qatvm-team-b_db/cidata.iso", None),
        (f"{IMAGES}/../vms/qatvm-team-b_db/cidata.iso", "/var/lib/qatvm/vms/qatvm-team-b_db/cidata.iso"),
        (IMAGES, None),
    ],
)
def test_paths_outside_the_image_directories_are_refused(root: Path, path: str, resolved: str | None) -> None:
    with pytest.raises(ImageRefused) as refused:
        policy(root).admit(path)
    shown = f"image.path {path} resolves to {resolved}, which" if resolved else f"image.path {path}"
    assert str(refused.value) == f"{shown} is outside the image directories {IMAGES}; put the image there"


def test_symlinks_resolve_inside_the_node_and_only_their_target_counts(root: Path) -> None:
    (images(root) / "shadow.qcow2").symlink_to("/etc/shadow")  # the node's /etc, never the machine's
    (images(root) / "neighbour.qcow2").symlink_to("../vms/qatvm-team-b_db/overlay.qcow2")
    (images(root) / "deep.qcow2").symlink_to("../../../../../../../../../../etc/shadow")
    (images(root) / "current.qcow2").symlink_to(f"{IMAGES}/base.qcow2")
    (images(root) / "loop").symlink_to("loop")
    node = policy(root)
    for name, target in (("shadow", "/etc/shadow"), ("deep", "/etc/shadow"),
                         ("neighbour", "/var/lib/qatvm/vms/qatvm-team-b_db/overlay.qcow2")):
        with pytest.raises(ImageRefused, match=f"resolves to {target}, which is outside the image directories"):
            node.admit(f"{IMAGES}/{name}.qcow2")
    assert node.admit(f"{IMAGES}/current.qcow2").host_path == images(root) / "base.qcow2"
    with pytest.raises(ImageRefused, match="more than 40 symlinks"):
        node.admit(f"{IMAGES}/loop")


def test_a_missing_image_says_where_images_go(root: Path) -> None:
    with pytest.raises(ImageMissing, match=f"image.path {IMAGES}/gone.qcow2 does not exist on the node; put the image there"):
        policy(root).admit(f"{IMAGES}/gone.qcow2")
    # Outside the image directories, whether the file exists is nobody's business.
    with pytest.raises(ImageRefused, match="image.path /root/.ssh/id_rsa is outside the image directories") as refused:
        policy(root).admit("/root/.ssh/id_rsa")
    assert not isinstance(refused.value, ImageMissing)


def test_special_files_are_refused_without_being_opened(root: Path) -> None:
    os.mkfifo(images(root) / "fifo")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(images(root) / "sock"))
    (images(root) / "dir").mkdir()
    try:
        node = policy(root)
        for name, kind in (("fifo", "a FIFO"), ("sock", "a socket"), ("dir", "a directory")):
            with pytest.raises(ImageRefused, match=f"{name} is {kind}, not a regular file"):
                node.admit(f"{IMAGES}/{name}")
    finally:
        listener.close()


def test_only_qcow2_and_raw_are_accepted(root: Path) -> None:
    qemu_img("create", "-q", "-f", "vmdk", str(images(root) / "disk.vmdk"), "1M")
    qemu_img("create", "-q", "-f", "raw", str(images(root) / "disk.raw"), "1M")
    node = policy(root)
    with pytest.raises(ImageRefused, match="is a vmdk image; only qcow2 and raw images are accepted"):
        node.admit(f"{IMAGES}/disk.vmdk")
    assert node.admit(f"{IMAGES}/disk.raw").format == "raw"


def crafted(root: Path, name: str, backing: str, *options: str) -> str:
    """A qcow2 image in the image directory whose header names `backing` (never opened here)."""
    qemu_img("create", "-q", "-f", "qcow2", "-u", *options, "-b", backing, str(images(root) / name), "16M")
    return f"{IMAGES}/{name}"


def test_every_file_of_the_backing_chain_must_be_in_the_image_directories(root: Path, tmp_path: Path) -> None:
    machine_secret = tmp_path / "shadow"
    machine_secret.write_bytes(SECRET)
    node = policy(root)
    refused = {
        "outside the node": crafted(root, "a.qcow2", str(machine_secret), "-F", "raw"),
        "the node's /etc": crafted(root, "b.qcow2", str(root / "etc/shadow"), "-F", "raw"),
        "another VM's overlay": crafted(root, "c.qcow2", str(root / "var/lib/qatvm/vms/qatvm-team-b_db/overlay.qcow2"), "-F", "qcow2"),
        "relative, out of the directory": crafted(root, "d.qcow2", "../vms/qatvm-team-b_db/cidata.iso", "-F", "raw"),
    }
    for what, path in refused.items():
        with pytest.raises(ImageRefused, match="every file of an image's backing chain must be in them"):
            node.admit(path)
            pytest.fail(f"a base backed by {what} was admitted")
    # A chain that stays inside is fine, relative or absolute.
    assert node.admit(crafted(root, "child.qcow2", "base.qcow2", "-F", "qcow2")).format == "qcow2"
    assert node.admit(crafted(root, "grandchild.qcow2", str(images(root) / "child.qcow2"), "-F", "qcow2")).format == "qcow2"


def test_a_chain_link_two_levels_down_is_checked_too(root: Path) -> None:
    crafted(root, "leak.qcow2", str(root / "etc/shadow"), "-F", "raw")
    path = crafted(root, "innocent.qcow2", "leak.qcow2", "-F", "qcow2")
    with pytest.raises(ImageRefused, match=f"image {IMAGES}/leak.qcow2 is backed by .*etc/shadow"):
        policy(root).admit(path)


def without_backing_format(root: Path, path: str) -> str:
    """qemu-img no longer writes such images, but older ones exist and QEMU would probe their backing."""
    image = images(root) / PurePosixPath(path).name
    header = bytearray(image.read_bytes())
    backing_format_extension = bytes.fromhex("e2792aca")
    at = header.index(backing_format_extension)
    header[at : at + 4] = bytes.fromhex("12345678")  # an extension QEMU does not know, and skips
    image.write_bytes(header)
    return path


def test_backing_files_without_a_format_a_file_or_an_end_are_refused(root: Path) -> None:
    node = policy(root)
    with pytest.raises(ImageRefused, match="format unset .*qemu-img rebase -u -F"):
        node.admit(without_backing_format(root, crafted(root, "probe.qcow2", "base.qcow2", "-F", "qcow2")))
    with pytest.raises(ImageRefused, match="which is not a file"):
        node.admit(crafted(root, "nbd.qcow2", "nbd://127.0.0.1:10809/x", "-F", "raw"))
    with pytest.raises(ImageRefused, match="which is not a file"):
        node.admit(crafted(root, "json.qcow2", 'json:{"driver":"file","filename":"/etc/shadow"}', "-F", "raw"))
    crafted(root, "loop-a.qcow2", "loop-b.qcow2", "-F", "qcow2")
    with pytest.raises(ImageRefused, match="a loop in the chain"):
        node.admit(crafted(root, "loop-b.qcow2", "loop-a.qcow2", "-F", "qcow2"))


def test_an_external_data_file_is_refused(root: Path) -> None:
    qemu_img("create", "-q", "-f", "qcow2", "-o", f"data_file={root / 'etc/shadow'},data_file_raw=on",
             str(images(root) / "data.qcow2"), "16M")
    with pytest.raises(ImageRefused, match=r"keeps its data in an external file \(.*etc/shadow\)"):
        policy(root).admit(f"{IMAGES}/data.qcow2")


def test_a_symlinked_image_directory_counts_where_it_points(root: Path) -> None:
    (root / "srv/images").mkdir(parents=True)
    qemu_img("create", "-q", "-f", "raw", str(root / "srv/images/x.raw"), "1M")
    (root / "images").symlink_to("/srv/images")
    assert policy(root, "/images").admit("/images/x.raw").host_path == root / "srv/images/x.raw"
    # ...and one that points into the agent's state is no image directory at all.
    (root / "sneaky").symlink_to("/var/lib/qatvm/vms")
    with pytest.raises(ImageRefused, match="outside the image directories /sneaky"):
        policy(root, "/sneaky").admit("/sneaky/qatvm-team-b_db/overlay.qcow2")


@pytest.mark.parametrize(
    ("directory", "problem"),
    [
        ("/var/lib/qatvm", "holds the agent's state directory"),
        ("/var/lib", "holds the agent's state directory"),
        ("/", "holds the agent's state directory"),
        ("/var/lib/qatvm/vms", "only /var/lib/qatvm/images may be"),
        ("/var/lib/qatvm/images/../vms", "without `..`"),
        ("/proc/self", "inside a kernel file system"),
        ("images", "not an absolute path"),
    ],
)
def test_the_agent_refuses_image_directories_that_expose_its_state(tmp_path: Path, directory: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        AgentConfig(node="n", host_root=tmp_path, image_dirs=(PurePosixPath(directory),))


def test_image_directories_come_from_the_agents_flags(tmp_path: Path) -> None:
    from qatvm.agent.main import parse

    _, default = parse(["--node", "n"])
    assert default.image_dirs == (PurePosixPath(IMAGES),)
    _, two = parse(["--node", "n", "--image-dir", "/srv/images", "--image-dir", f"{IMAGES}/gold"])
    assert two.image_dirs == (PurePosixPath("/srv/images"), PurePosixPath(f"{IMAGES}/gold"))
    with pytest.raises(SystemExit):
        parse(["--node", "n", "--image-dir", "/var/lib/qatvm"])


def test_on_a_real_node_proc_and_dev_are_refused_through_symlinks(tmp_path: Path) -> None:
    """host_root `/`, as in the DaemonSet: the machine's own /proc and /dev are the node's."""
    real_node = ImagePolicy(Path("/"), (PurePosixPath(tmp_path),), PurePosixPath("/var/lib/qatvm"))
    (tmp_path / "environ.raw").symlink_to("/proc/self/environ")
    (tmp_path / "null.raw").symlink_to("/dev/null")
    with pytest.raises(ImageRefused, match=r"resolves to /proc/\d+/environ, which is outside the image directories"):
        real_node.admit(f"{tmp_path}/environ.raw")
    with pytest.raises(ImageRefused, match="resolves to /dev/null, which is outside the image directories"):
        real_node.admit(f"{tmp_path}/null.raw")


@pytest.mark.skipif(os.geteuid() != 0, reason="making a device node needs root")
def test_a_device_inside_an_image_directory_is_refused_by_its_type(tmp_path: Path) -> None:
    os.mknod(tmp_path / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    real_node = ImagePolicy(Path("/"), (PurePosixPath(tmp_path),), PurePosixPath("/var/lib/qatvm"))
    with pytest.raises(ImageRefused, match="is a character device, not a regular file"):
        real_node.admit(f"{tmp_path}/null")


def test_a_header_is_read_once_until_the_file_changes(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import qatvm.node.images as module

    reads: list[Path] = []
    real = module.image_info
    monkeypatch.setattr(module, "image_info", lambda path, fmt=None: reads.append(path) or real(path, fmt))
    node = policy(root)
    for _ in range(3):
        node.admit(f"{IMAGES}/base.qcow2")
    assert reads == [images(root) / "base.qcow2"] * 2  # probed, then read with its format pinned: once each
    # Rewritten in place to name a file outside the image directories: refused, not remembered.
    (tmp_path / "outside.qcow2").write_bytes(b"")
    qemu_img("rebase", "-u", "-F", "qcow2", "-b", str(tmp_path / "outside.qcow2"), str(images(root) / "base.qcow2"))
    with pytest.raises(ImageRefused, match="outside the image directories"):
        node.admit(f"{IMAGES}/base.qcow2")
