"""Which physical device an entry of ``gpus`` is (``loops/_gpus``): parsed from ``nvidia-smi``'s
own output text, in the formats NVIDIA documents (``nvidia-smi -L`` with and without MIG, in the
R450 and the R470+ MIG formats; ``--query-gpu=index,uuid --format=csv,noheader``), and the
fallbacks without it (the Slurm job and index; the index alone). Then the lock names those
identities give: one per device and occurrence, the same for two launches that list one device
differently, different for launches that hold different devices."""

from __future__ import annotations

import subprocess
import sys

from hparam_joblib.runtime.loops._gpus import device_identities, lease_names, parse_smi_list, parse_smi_query
from hparam_joblib.runtime.loops._slots import take_named_slot
from tests.conftest import Project, child_env, unprivileged_prefix

#: ``nvidia-smi -L`` on a machine with two GPUs (the NVIDIA System Management Interface docs).
LIST_TWO = """\
GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-5c89852c-d268-c3f3-1b07-005d5ae1dc3f)
GPU 1: NVIDIA A100-SXM4-40GB (UUID: GPU-0fb2d9b6-b6c4-1e8a-4a5d-f2b7c0a2ad89)
"""

#: ``nvidia-smi -L`` with GPU 0 in MIG mode, R470+ (the MIG user guide: "MIG-<uuid>").
LIST_MIG = """\
GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-5d5ba0d6-d33d-2b2c-524d-9e3d8d2b8a77)
  MIG 1g.5gb      Device  0: (UUID: MIG-c6d4f1ef-42e4-5de3-91c7-45d71c87eb3f)
  MIG 1g.5gb      Device  1: (UUID: MIG-cba663e8-9bed-5b25-b243-5985ef7c9beb)
GPU 1: NVIDIA A100-SXM4-40GB (UUID: GPU-0fb2d9b6-b6c4-1e8a-4a5d-f2b7c0a2ad89)
"""

#: The same before driver R470 (the MIG user guide: "MIG-GPU-<gpu uuid>/<gi>/<ci>").
LIST_MIG_R450 = """\
GPU 0: A100-SXM4-40GB (UUID: GPU-5d5ba0d6-d33d-2b2c-524d-9e3d8d2b8a77)
  MIG 3g.20gb Device 0: (UUID: MIG-GPU-5d5ba0d6-d33d-2b2c-524d-9e3d8d2b8a77/1/0)
  MIG 3g.20gb Device 1: (UUID: MIG-GPU-5d5ba0d6-d33d-2b2c-524d-9e3d8d2b8a77/2/0)
"""

#: ``nvidia-smi --query-gpu=index,uuid --format=csv,noheader``.
QUERY = """\
0, GPU-5c89852c-d268-c3f3-1b07-005d5ae1dc3f
1, GPU-0fb2d9b6-b6c4-1e8a-4a5d-f2b7c0a2ad89
"""

#: What nvidia-smi prints where the driver is not loaded (exit 9): no device.
NO_DRIVER = ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
             "Make sure that the latest NVIDIA driver is installed and running.\n")

A0 = "GPU-5c89852c-d268-c3f3-1b07-005d5ae1dc3f"
A1 = "GPU-0fb2d9b6-b6c4-1e8a-4a5d-f2b7c0a2ad89"


def test_parse_list_and_query() -> None:
    assert parse_smi_list(LIST_TWO) == ({"0": A0, "1": A1}, ())
    assert parse_smi_query(QUERY) == {"0": A0, "1": A1}
    by_index, migs = parse_smi_list(LIST_MIG)
    assert by_index == {"0": "GPU-5d5ba0d6-d33d-2b2c-524d-9e3d8d2b8a77", "1": A1}
    assert migs == ("MIG-c6d4f1ef-42e4-5de3-91c7-45d71c87eb3f", "MIG-cba663e8-9bed-5b25-b243-5985ef7c9beb")
    assert parse_smi_list(LIST_MIG_R450)[1] == (
        "MIG-GPU-5d5ba0d6-d33d-2b2c-524d-9e3d8d2b8a77/1/0", "MIG-GPU-5d5ba0d6-d33d-2b2c-524d-9e3d8d2b8a77/2/0")
    assert parse_smi_list(NO_DRIVER) == ({}, ())
    assert parse_smi_query(NO_DRIVER) == {}
    assert parse_smi_list("No devices were found\n") == ({}, ())


def _smi(text: str) -> tuple[dict[str, str], tuple[str, ...]]:
    by_index, migs = parse_smi_list(text)
    return by_index, (*by_index.values(), *migs)


def test_identity_is_the_uuid_where_nvidia_smi_gives_one() -> None:
    smi = _smi(LIST_TWO)
    assert device_identities(["0", "1"], smi, {}) == (f"uuid:{A0}", f"uuid:{A1}")
    # A UUID, or a unique prefix of one (CUDA_VISIBLE_DEVICES accepts both), is the same device.
    assert device_identities([A1, "GPU-5c89852c"], smi, {}) == (f"uuid:{A1}", f"uuid:{A0}")
    mig = "MIG-c6d4f1ef-42e4-5de3-91c7-45d71c87eb3f"
    assert device_identities([mig], _smi(LIST_MIG), {}) == (f"uuid:{mig}",)
    # A UUID this machine does not show (or an ambiguous prefix) is taken as written.
    assert device_identities(["GPU-", "GPU-ffff"], smi, {}) == ("uuid:GPU-", "uuid:GPU-ffff")
    # The job does not matter once the device has a UUID: two jobs never hold the same UUID.
    assert device_identities(["0"], smi, {"SLURM_JOB_ID": "12"}) == (f"uuid:{A0}",)


def test_without_a_uuid_the_slurm_job_or_the_index() -> None:
    none: tuple[dict[str, str], tuple[str, ...]] = ({}, ())
    # Two --gres=gpu:2 jobs under cgroup device constraints both see 0,1: the job tells them apart.
    assert device_identities(["0", "1"], none, {"SLURM_JOB_ID": "41"}) == ("slurm-job-41:0", "slurm-job-41:1")
    assert device_identities(["0", "1"], none, {"SLURM_JOB_ID": "42"}) == ("slurm-job-42:0", "slurm-job-42:1")
    assert device_identities(["2", "3"], none, {}) == ("index:2", "index:3")
    # An index nvidia-smi does not list (it shows this cgroup's devices only) falls back too.
    assert device_identities(["5"], _smi(LIST_TWO), {}) == ("index:5",)


def test_lock_names_follow_the_device_not_the_place_in_the_list() -> None:
    smi = _smi(LIST_TWO)
    key = "study"
    # One launch lists [0, 1], another [A1]: device 1 is one lock, whichever form named it.
    first = lease_names(key, device_identities(["0", "1"], smi, {}))
    second = lease_names(key, device_identities([A1], smi, {}))
    assert second[0] == first[1] and second[0] != first[0]
    # A device listed twice has two locks; another launch listing it once shares the first.
    twice = lease_names(key, device_identities(["1", "1", "0"], smi, {}))
    assert len(set(twice)) == 3 and twice[0] == first[1] and twice[2] == first[0]
    # Launches that hold different devices share no lock: 0,1 and 2,3 (no nvidia-smi), and two
    # Slurm jobs that both number their own devices 0,1.
    none: tuple[dict[str, str], tuple[str, ...]] = ({}, ())
    assert not set(lease_names(key, device_identities(["0", "1"], none, {}))) & set(
        lease_names(key, device_identities(["2", "3"], none, {})))
    assert not set(lease_names(key, device_identities(["0", "1"], none, {"SLURM_JOB_ID": "41"}))) & set(
        lease_names(key, device_identities(["0", "1"], none, {"SLURM_JOB_ID": "42"})))
    # Another study's leases are its own.
    assert not set(first) & set(lease_names("other", device_identities(["0", "1"], smi, {})))


def test_slot_directory_made_by_one_user_takes_another_users_slots(user_project: Project) -> None:
    """Several users' jobs share a node: the lock directory the first one makes (mode 1777, as
    /tmp) lets the next user make its own lock files there. As root the second user is nobody."""
    prefix = unprivileged_prefix(user_project)
    directory = user_project.root / "slots"
    held = take_named_slot(["mine"], directory, lambda: False)
    assert held is not None
    code = ("import sys; from pathlib import Path; from hparam_joblib.runtime.loops._slots import take_named_slot; "
            "slot = take_named_slot(['theirs'], Path(sys.argv[1]), lambda: True); print(slot is not None)")
    other = subprocess.run([*prefix, sys.executable, "-c", code, str(directory)], check=False, capture_output=True,
                           text=True, timeout=60, env=child_env(), cwd=user_project.root)
    held.release()
    assert other.returncode == 0 and other.stdout.strip() == "True", other.stderr[-2000:]
