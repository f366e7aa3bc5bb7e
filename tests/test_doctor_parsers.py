"""The doctor's readers, one by one, on text and files shaped like the real ones."""

from __future__ import annotations

import os
import struct

import pytest

from aipc.doctor import cpu, pci, windows
from aipc.doctor.check import FAIL, INFO, OK, WARN, Check, Report
from aipc.doctor.sysroot import (
    ACL_GROUP,
    ACL_GROUP_OBJ,
    ACL_MASK,
    ACL_OTHER,
    ACL_USER,
    ACL_USER_OBJ,
    Identity,
    SysRoot,
    can_open_rw,
    library_version,
    parse_posix_acl,
    version_tuple,
)
from tests.doctor_fixtures import MTL_CPUINFO, USER_UID, Machine

ADA = Identity(uid=1000, gid=1000, groups=frozenset({1000, 27}), user="ada")


def test_cpuinfo_reads_the_first_processor():
    info = cpu.parse_cpuinfo(MTL_CPUINFO + "\nprocessor\t: 1\nmodel name\t: something else\n")
    assert (info.vendor, info.family, info.model) == ("GenuineIntel", 6, 170)
    assert info.name == "Intel(R) Core(TM) Ultra 7 155H"
    assert cpu.isa_flags(info) == ["avx2", "avx_vnni"]
    assert str(cpu.generation(info)) == "Core Ultra Series 1 (Meteor Lake)"


@pytest.mark.parametrize(
    ("family", "model", "vendor", "name", "expected"),
    [
        (6, 0xBD, "GenuineIntel", "Intel(R) Core(TM) Ultra 7 258V", "Core Ultra Series 2 (Lunar Lake)"),
        (6, 0xC6, "GenuineIntel", "Intel(R) Core(TM) Ultra 9 285K", "Core Ultra Series 2 (Arrow Lake)"),
        (6, 0xCC, "GenuineIntel", "Intel(R) Core(TM) Ultra X7 358H", "Core Ultra Series 3 (Panther Lake)"),
        (6, 0xCF, "GenuineIntel", "Intel(R) Xeon(R) Processor", None),
        (6, 0xBA, "GenuineIntel", "13th Gen Intel(R) Core(TM) i7-13700H", None),
        (25, 0x75, "AuthenticAMD", "AMD Ryzen AI 9 HX 370", None),
        (
            6,
            0xFE,
            "GenuineIntel",
            "Intel(R) Core(TM) Ultra 5 999X",
            "Core Ultra (a generation this aipc does not know yet)",
        ),
    ],
)
def test_generation(family, model, vendor, name, expected):
    gen = cpu.generation(cpu.CpuInfo(vendor, family, model, name, None))
    assert (str(gen) if gen else None) == expected


def test_windows_processor_caption():
    info = cpu.parse_caption("Intel64 Family 6 Model 189 Stepping 1, GenuineIntel")
    assert (info.vendor, info.family, info.model, info.flags) == ("GenuineIntel", 6, 189, None)
    assert cpu.generation(info).codename == "Lunar Lake"
    assert cpu.parse_caption("AMD64 Family 25 Model 117 Stepping 2, AuthenticAMD").vendor == "AuthenticAMD"


def test_versions():
    assert version_tuple("6.8.0-45-generic") == (6, 8, 0)
    assert version_tuple("7.0-rc1") == (7, 0)
    assert version_tuple("") == () and version_tuple(None) == ()


def test_library_version_from_names_and_links(tmp_path):
    m = Machine(tmp_path).library("libze_loader.so", "1.21.9")
    root = SysRoot(m.root)
    found = root.find_library("libze_loader.so")
    assert [p.name for p in found] == ["libze_loader.so.1", "libze_loader.so.1.21.9"]
    assert library_version(found, "libze_loader.so") == "1.21.9"
    only_link = [p for p in found if p.name.endswith(".so.1")]
    assert library_version(only_link, "libze_loader.so") == "1.21.9"  # through the link's target
    assert library_version(found, "libze_intel_npu.so") is None
    assert root.find_library("libze") == []  # a prefix is not a library name


def test_ld_so_conf_includes(tmp_path):
    m = Machine(tmp_path)
    m.write("etc/ld.so.conf", "include /etc/ld.so.conf.d/*.conf\n")
    m.write("etc/ld.so.conf.d/intel.conf", "# Intel\n/opt/intel/npu/lib\n")
    m.write("opt/intel/npu/lib/libze_intel_npu.so.1", "\x7fELF")
    root = SysRoot(m.root)
    assert root.path("opt/intel/npu/lib") in root.lib_dirs()
    assert [p.name for p in root.find_library("libze_intel_npu.so")] == ["libze_intel_npu.so.1"]


@pytest.mark.parametrize(
    ("mode", "owner", "group", "ident", "expected"),
    [
        (0o660, 0, 992, ADA, (False, "other")),
        (0o660, 0, 27, ADA, (True, "group")),
        (0o066, 1000, 27, ADA, (False, "owner")),  # the owner class decides even when group and others may
        (0o666, 0, 0, ADA, (True, "other")),
        (0o600, 0, 0, Identity(0, 0, frozenset({0})), (True, "root")),
    ],
)
def test_permission_classes(mode, owner, group, ident, expected):
    assert can_open_rw(mode, owner, group, ident) == expected


def acl(*entries: tuple[int, int, int]) -> bytes:
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


ANY = 0xFFFFFFFF


def test_posix_acl():
    blob = acl(
        (ACL_USER_OBJ, 6, ANY), (ACL_USER, 6, 1000), (ACL_GROUP_OBJ, 6, ANY), (ACL_MASK, 6, ANY), (ACL_OTHER, 0, ANY)
    )
    entries = parse_posix_acl(blob)
    assert entries[1] == (ACL_USER, 6, 1000)
    assert can_open_rw(0o660, 0, 992, ADA, entries) == (True, "acl")  # logind's uaccess grant
    masked = parse_posix_acl(acl((ACL_USER_OBJ, 6, ANY), (ACL_GROUP, 6, 27), (ACL_MASK, 4, ANY), (ACL_OTHER, 0, ANY)))
    assert can_open_rw(0o640, 0, 992, ADA, masked) == (False, "acl")  # the mask takes write away
    with pytest.raises(ValueError):
        parse_posix_acl(b"\x01\x00\x00\x00")


def test_node_access_reads_a_real_acl(tmp_path):
    m = Machine(tmp_path).cpu()
    node = m.write("dev/dri/renderD128", mode=0o600)
    try:
        entries = [(ACL_USER_OBJ, 6, ANY), (ACL_USER, 6, USER_UID), (ACL_GROUP_OBJ, 0, ANY), (ACL_MASK, 6, ANY)]
        os.setxattr(node, "system.posix_acl_access", acl(*entries, (ACL_OTHER, 0, ANY)))
    except OSError as exc:
        pytest.skip(f"this filesystem does not take POSIX ACLs: {exc}")
    m.user(in_render=False)
    access = SysRoot(m.root).node_access("/dev/dri/renderD128")
    assert access.allowed and access.how == "acl"


def test_identity_from_proc_self_status(tmp_path):
    m = Machine(tmp_path).cpu()
    m.write("dev/accel/accel0", mode=0o660)
    m.user()
    ident = SysRoot(m.root).identity()
    assert ident.uid == USER_UID and ident.user == "ada"
    assert os.stat(m.root / "dev/accel/accel0").st_gid in ident.groups
    bare = SysRoot(tmp_path / "empty").identity()  # no proc/self/status: the process itself
    assert bare.uid == os.geteuid() and set(os.getgroups()) <= bare.groups


def test_pci_devices(tmp_path):
    m = Machine(tmp_path).npu().gpu(driver="xe")
    m.pci("0000:01:00.0", 0x10DE, 0x2330, 0x030200)
    m.pci("0000:00:0c.0", 0x8086, 0xABCD, 0x120000)  # an Intel accelerator id aipc does not know
    root = SysRoot(m.root)
    npus = {d.address: d for d in pci.npus(root)}
    assert npus["0000:00:0b.0"].driver == "intel_vpu" and pci.NPU_IDS[npus["0000:00:0b.0"].device][1] == 37
    assert "0000:00:0c.0" in npus
    gpus = {d.address: d for d in pci.gpus(root)}
    assert gpus["0000:00:02.0"].driver == "xe" and gpus["0000:01:00.0"].vendor_name == "NVIDIA"


def test_pnp_json_single_device_and_problem():
    text = (
        '{"Processor":{"Name":"Intel(R) Core(TM) Ultra 7 258V","Caption":"Intel64 Family 6 Model 189 Stepping 1",'
        '"Manufacturer":"GenuineIntel"},"Devices":{"FriendlyName":"Intel(R) AI Boost","Class":"ComputeAccelerator",'
        '"Status":"Error","Problem":"CM_PROB_FAILED_START","InstanceId":"PCI\\\\VEN_8086&DEV_643E&SUBSYS_0000&REV_04\\\\3&1",'
        '"DriverVersion":"32.0.100.3104"}}'
    )
    proc, devices = windows.parse_pnp_json(text)
    assert proc["Name"].startswith("Intel(R) Core(TM) Ultra 7")
    (npu,) = devices
    assert npu.ids == (0x8086, 0x643E) and npu.problem == "CM_PROB_FAILED_START" and not npu.working
    _, ok = windows.parse_pnp_json('{"Devices":[{"Status":"OK","Problem":0,"InstanceId":"PCI\\\\VEN_8086&DEV_7D55"}]}')
    assert ok[0].working and ok[0].problem == ""


# `pnputil /enum-devices /connected /drivers` as Microsoft documents its layout (Windows 11, English).
PNPUTIL_SAMPLE = r"""Microsoft PnP Utility

Instance ID:                PCI\VEN_8086&DEV_7D1D&SUBSYS_0CB21028&REV_04\3&11583659&0&58
Device Description:         Intel(R) AI Boost
Class Name:                 ComputeAccelerator
Class GUID:                 {f01a9d53-3ff6-48d2-9f97-c8a7004be10c}
Manufacturer Name:          Intel Corporation
Status:                     Started
Driver Name:                oem64.inf
Matching Drivers:
    Driver Name:            oem12.inf
    Original Name:          npu.inf
    Provider Name:          Intel Corporation
    Driver Version:         02/01/2024 31.0.100.1688
    Driver Status:          Outranked

    Driver Name:            oem64.inf
    Original Name:          npu.inf
    Provider Name:          Intel Corporation
    Driver Version:         08/22/2024 32.0.100.3104
    Driver Status:          Best Ranked / Installed

Instance ID:                PCI\VEN_8086&DEV_7D55&SUBSYS_0CB21028&REV_08\3&11583659&0&10
Device Description:         Microsoft Basic Display Adapter
Class Name:                 Display
Class GUID:                 {4d36e968-e325-11ce-bfc1-08002be10318}
Manufacturer Name:          (Standard display types)
Status:                     Problem
Problem Code:               28 (0x1C) [CM_PROB_FAILED_INSTALL]
Driver Name:                display.inf
"""


def test_pnputil_parser():
    npu, gpu = windows.parse_pnputil(PNPUTIL_SAMPLE)
    assert npu.name == "Intel(R) AI Boost" and npu.cls == "ComputeAccelerator" and npu.working
    assert npu.driver_version == "32.0.100.3104"  # the installed driver, not the outranked one
    assert gpu.ids == (0x8086, 0x7D55) and gpu.status == "Problem" and "CM_PROB_FAILED_INSTALL" in gpu.problem
    assert not gpu.working and gpu.driver_version == ""


def test_pnputil_capture_drives_the_windows_checks(tmp_path):
    m = Machine(tmp_path)
    m.write("windows/pnputil.txt", PNPUTIL_SAMPLE)
    m.write("windows/processor.txt", "Intel64 Family 6 Model 170 Stepping 4, GenuineIntel")
    root = SysRoot(m.root)
    assert root.platform == "windows"
    npu_check, gpu_check = windows.checks(root, cpu.generation(cpu.read(root)))
    assert npu_check.status == OK and "32.0.100.3104" in npu_check.detail
    assert gpu_check.status == FAIL and "no Intel driver" in gpu_check.detail


def test_report_grades_failures_by_the_device_asked_for():
    chain = [
        Check("npu", "NPU device", FAIL, "none", needed_by=("npu",), quiet=True),
        Check("gpu", "OpenCL driver", FAIL, "missing", needed_by=("gpu",)),
        Check("backends", "llamacpp", OK, "cpu, gpu", serves=("cpu", "gpu")),
    ]
    auto = Report("auto", "/", "linux", chain)
    assert [auto.shown(c) for c in chain] == [INFO, WARN, OK] and auto.exit_code == 0
    npu = Report("npu", "/", "linux", chain)
    assert npu.shown(chain[0]) == FAIL and npu.exit_code == 1
    gpu = Report("gpu", "/", "linux", chain)  # served by llama.cpp, so the Intel chain's gap is a warning
    assert gpu.verdict("gpu").usable and gpu.shown(chain[1]) == WARN and gpu.exit_code == 0
    assert Report("cpu", "/", "linux", chain[:2]).exit_code == 1  # nothing serves the CPU
