"""The Intel NPU's chain on Linux, link by link: the PCI device, the kernel (intel_vpu arrived in 6.3;
OpenVINO asks for 6.6+), the intel_vpu driver bound to the device, its firmware, /dev/accel/accel* and who
may open it, then the user-space side: the Level Zero loader, the NPU's Level Zero driver
(libze_intel_npu.so, libze_intel_vpu.so before driver 1.16) and the NPU compiler.
Facts from https://github.com/intel/linux-npu-driver/blob/main/docs/overview.md and the kernel's
drivers/accel/ivpu sources."""

from __future__ import annotations

from aipc.doctor import links, pci
from aipc.doctor.check import EMULATED_NOTE, FAIL, INFO, OK, WARN, Check, relaxed
from aipc.doctor.cpu import Generation
from aipc.doctor.nodes import access_check
from aipc.doctor.sysroot import SysRoot, library_version, version_tuple

AREA = "npu"
NEED = ("npu",)
FIRMWARE_DIRS = (
    "lib/firmware/updates/intel/vpu",
    "lib/firmware/intel/vpu",
    "usr/lib/firmware/updates/intel/vpu",
    "usr/lib/firmware/intel/vpu",
)
MIN_KERNEL = (6, 3)  # intel_vpu merged
OV_MIN_KERNEL = (6, 6)  # OpenVINO's stated requirement for inference on the NPU
NPU_NAME_LOADER_MIN = (1, 17, 17)  # older loaders only find the pre-1.16 name libze_intel_vpu.so.1
DRIVER_PACKAGES = "the NPU driver release (intel-fw-npu, intel-level-zero-npu, intel-driver-compiler-npu)"


def checks(root: SysRoot, gen: Generation | None, emulated: bool = False) -> list[Check]:
    """Each link, in order. A missing PCI device ends the chain; later links are checked even after a failure
    where they do not depend on it, so one run lists everything to fix."""
    found = _chain(root, gen)
    return relaxed(found, "npu", EMULATED_NOTE) if emulated else found


def _chain(root: SysRoot, gen: Generation | None) -> list[Check]:
    devices = pci.npus(root)
    if not devices:
        if gen:
            detail = f"no Intel NPU on the PCI bus, although a {gen} processor has one"
            fix = "enable the NPU in the firmware (BIOS) setup, then check: lspci -nn | grep -i accelerator"
        else:
            detail = "no Intel NPU on the PCI bus (NPUs come with Core Ultra processors)"
            fix = "an NPU needs a Core Ultra (Meteor Lake or newer) processor; aipc uses the GPU or CPU here"
        return [Check(AREA, "NPU device", FAIL, detail, fix, links.NPU_HAS, NEED, quiet=gen is None)]
    dev = devices[0]
    platform, ip = pci.NPU_IDS.get(dev.device, (None, None))
    what = f"{platform} NPU ({ip}xx)" if platform else "Intel processing accelerator (an NPU id new to aipc)"
    out = [Check(AREA, "NPU device", OK, f"{what} at {dev.address} [{dev.ids}]", needed_by=NEED)]
    out.append(_kernel(root))
    loaded = "intel_vpu" in root.loaded_modules() or dev.driver == "intel_vpu"
    out.append(_driver(root, dev, loaded))
    nodes = [root.rel(p) for p in root.glob("dev/accel/accel*")]
    out.append(_firmware(root, ip, bound=dev.driver == "intel_vpu" and bool(nodes)))
    if nodes:
        out.append(Check(AREA, "/dev/accel", OK, ", ".join(nodes), needed_by=NEED))
        out.append(access_check(root, nodes[0], AREA, "npu", links.NPU_TROUBLESHOOTING))
    elif loaded:
        out.append(
            Check(
                AREA,
                "/dev/accel",
                FAIL,
                "intel_vpu is loaded but there is no /dev/accel/accel* node",
                "look for probe or firmware errors: sudo dmesg | grep -i vpu; then reload: "
                "sudo rmmod intel_vpu && sudo modprobe intel_vpu (or reboot)",
                links.NPU_TROUBLESHOOTING,
                NEED,
            )
        )
    out += _user_space(root)
    return out


def _kernel(root: SysRoot) -> Check:
    release = root.kernel_release()
    v = version_tuple(release)
    if not v:
        return Check(AREA, "kernel", INFO, "release unknown", needed_by=NEED)
    if v < MIN_KERNEL:
        return Check(
            AREA,
            "kernel",
            FAIL,
            f"Linux {release}: the intel_vpu driver arrived in 6.3",
            "boot a Linux 6.6 or newer kernel (Ubuntu 24.04's 6.8, or 22.04's HWE kernel)",
            links.OV_NPU,
            NEED,
        )
    if v < OV_MIN_KERNEL:
        return Check(
            AREA,
            "kernel",
            WARN,
            f"Linux {release}: OpenVINO asks for 6.6 or newer for the NPU",
            "boot a Linux 6.6 or newer kernel",
            links.OV_NPU,
            NEED,
        )
    return Check(AREA, "kernel", OK, f"Linux {release}", needed_by=NEED)


def _driver(root: SysRoot, dev: pci.PciDevice, loaded: bool) -> Check:
    name = "intel_vpu driver"
    if dev.driver == "intel_vpu":
        return Check(AREA, name, OK, f"bound to {dev.address}", needed_by=NEED)
    if dev.driver:
        return Check(
            AREA,
            name,
            FAIL,
            f"{dev.address} is bound to {dev.driver}, not intel_vpu",
            f"unbind {dev.driver} from the NPU, then: sudo modprobe intel_vpu",
            links.NPU_TROUBLESHOOTING,
            NEED,
        )
    if loaded:
        return Check(
            AREA,
            name,
            FAIL,
            f"intel_vpu is loaded but not bound to {dev.address} [{dev.ids}]",
            "see why it did not attach: sudo dmesg | grep -i vpu (a kernel older than this NPU, or missing firmware)",
            links.NPU_TROUBLESHOOTING,
            NEED,
        )
    if _module_available(root):
        fix = "load it: sudo modprobe intel_vpu (then check: sudo dmesg | grep -i vpu)"
    else:
        fix = "this kernel has no intel_vpu module: boot Linux 6.6+ built with CONFIG_DRM_ACCEL_IVPU"
    return Check(AREA, name, FAIL, "the intel_vpu module is not loaded", fix, links.NPU_TROUBLESHOOTING, NEED)


def _module_available(root: SysRoot) -> bool:
    release = root.kernel_release()
    if not release:
        return False
    base = f"lib/modules/{release}"
    if root.glob(f"{base}/kernel/drivers/accel/ivpu/intel_vpu.ko*"):
        return True
    return "intel_vpu.ko" in (root.read(f"{base}/modules.dep", limit=16 << 20) or "")


def _firmware(root: SysRoot, ip: int | None, bound: bool) -> Check:
    # vpu_37xx_v1.bin, vpu_37xx_v0.0.bin (older), possibly compressed (.zst, .xz); mtl_vpu_* before that
    patterns = ["*.bin*"] if ip is None else [f"vpu_{ip}xx_v*.bin*"] + (["mtl_vpu_v*.bin*"] if ip == 37 else [])
    for d in FIRMWARE_DIRS:
        for pattern in patterns:
            hits = root.glob(f"{d}/{pattern}")
            if hits:
                return Check(AREA, "NPU firmware", OK, ", ".join(root.rel(p) for p in hits), needed_by=NEED)
    wanted = f"intel/vpu/vpu_{ip}xx_v1.bin" if ip else "intel/vpu/*.bin"
    return Check(
        AREA,
        "NPU firmware",
        WARN if bound else FAIL,
        f"no {wanted} under /lib/firmware" + (" (the driver runs, so it came from elsewhere)" if bound else ""),
        "install intel-fw-npu from the NPU driver release (or your distribution's linux-firmware), then: "
        "sudo rmmod intel_vpu && sudo modprobe intel_vpu",
        links.NPU_DRIVER,
        NEED,
    )


def _user_space(root: SysRoot) -> list[Check]:
    out = []
    loader = root.find_library("libze_loader.so")
    loader_v = library_version(loader, "libze_loader.so")
    if loader:
        out.append(Check(AREA, "Level Zero loader", OK, f"libze_loader.so {loader_v or ''}".strip(), needed_by=NEED))
    else:
        out.append(
            Check(
                AREA,
                "Level Zero loader",
                FAIL,
                "libze_loader.so.1 not found in the library path",
                "install Level Zero (Ubuntu 24.04: sudo apt install libze1, or the version the NPU driver names)",
                links.LEVEL_ZERO,
                NEED,
            )
        )
    npu = root.find_library("libze_intel_npu.so")
    legacy = root.find_library("libze_intel_vpu.so")
    name = "NPU Level Zero driver"
    if npu:
        v = library_version(npu, "libze_intel_npu.so")
        out.append(Check(AREA, name, OK, f"libze_intel_npu.so {v or ''}".strip(), needed_by=NEED))
        if legacy:
            out.append(
                Check(
                    AREA,
                    "old NPU driver library",
                    WARN,
                    "libze_intel_vpu.so (driver < 1.16) is also installed",
                    "remove the old library; the loader may pick it over libze_intel_npu.so",
                    links.NPU_TROUBLESHOOTING,
                    NEED,
                )
            )
        lv = version_tuple(loader_v)
        if lv and lv < NPU_NAME_LOADER_MIN and not legacy:
            out.append(
                Check(
                    AREA,
                    "Level Zero loader version",
                    FAIL,
                    f"loader {loader_v} predates 1.17.17 and does not look for libze_intel_npu.so",
                    "update Level Zero to 1.17.17 or newer",
                    links.LEVEL_ZERO,
                    NEED,
                )
            )
    elif legacy:
        v = library_version(legacy, "libze_intel_vpu.so")
        out.append(
            Check(
                AREA,
                name,
                WARN,
                f"only libze_intel_vpu.so {v or ''} (a driver older than 1.16)".replace("  ", " "),
                "update to the current NPU driver",
                links.NPU_DRIVER,
                NEED,
            )
        )
    else:
        out.append(
            Check(
                AREA,
                name,
                FAIL,
                "libze_intel_npu.so.1 not found in the library path",
                f"install {DRIVER_PACKAGES}",
                links.NPU_DRIVER,
                NEED,
            )
        )
    compilers = root.find_library("libnpu_driver_compiler.so") + root.find_library("libopenvino_intel_npu_compiler.so")
    if compilers:
        out.append(Check(AREA, "NPU compiler", OK, compilers[0].name, needed_by=NEED))
    else:
        out.append(
            Check(
                AREA,
                "NPU compiler",
                FAIL,
                "no libnpu_driver_compiler.so or libopenvino_intel_npu_compiler.so: no NPU model compiles",
                "install intel-driver-compiler-npu from the NPU driver release",
                links.NPU_DRIVER,
                NEED,
            )
        )
    return out
