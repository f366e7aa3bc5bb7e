"""PCI devices as sysfs shows them (/sys/bus/pci/devices/<address>/{vendor,device,class,driver}), and the
Intel NPU ids the kernel's intel_vpu driver binds to (drivers/accel/ivpu/ivpu_drv.h)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from aipc.doctor.sysroot import SysRoot

INTEL = 0x8086
# device id -> (platform, NPU IP generation: the firmware file is intel/vpu/vpu_<gen>xx_v*.bin)
NPU_IDS: dict[int, tuple[str, int]] = {
    0x7D1D: ("Meteor Lake", 37),
    0xAD1D: ("Arrow Lake", 37),
    0x643E: ("Lunar Lake", 40),
    0xB03E: ("Panther Lake", 50),
    0xFD3E: ("Wildcat Lake", 50),
    0xD71D: ("Nova Lake", 60),
}
ACCELERATOR_CLASS = 0x12  # PCI base class "processing accelerators" (the NPU is 0x120000)
DISPLAY_CLASS = 0x03  # VGA (0x0300xx), 3D (0x0302xx) and other display controllers (0x0380xx)
VENDORS = {0x8086: "Intel", 0x10DE: "NVIDIA", 0x1002: "AMD"}
# Display adapters that are no compute GPU: virtual machines' (virtio, QEMU/Bochs, VMware, Hyper-V, VirtualBox,
# Cirrus) and servers' management consoles (ASPEED, Matrox).
NO_COMPUTE_VENDORS = {0x1AF4, 0x1234, 0x15AD, 0x1414, 0x80EE, 0x1013, 0x1A03, 0x102B}


@dataclass(frozen=True)
class PciDevice:
    address: str  # 0000:00:0b.0
    vendor: int
    device: int
    cls: int  # 24-bit class code
    driver: str | None  # the bound kernel driver, from the `driver` symlink

    @property
    def ids(self) -> str:
        return f"{self.vendor:04x}:{self.device:04x}"

    @property
    def vendor_name(self) -> str:
        return VENDORS.get(self.vendor, f"vendor {self.vendor:04x}")


def devices(root: SysRoot) -> list[PciDevice]:
    found = []
    for d in root.glob("sys/bus/pci/devices/*"):
        vendor, device, cls = (_hex(root.read(root.rel(d / n))) for n in ("vendor", "device", "class"))
        if vendor is None or device is None or cls is None:
            continue
        link = d / "driver"
        driver = os.path.basename(os.readlink(link)) if os.path.islink(link) else None
        found.append(PciDevice(d.name, vendor, device, cls, driver))
    return found


def npus(root: SysRoot) -> list[PciDevice]:
    """Intel NPUs: a known NPU id, or an Intel device of the processing-accelerator class."""
    return [d for d in devices(root) if d.vendor == INTEL and (d.device in NPU_IDS or d.cls >> 16 == ACCELERATOR_CLASS)]


def gpus(root: SysRoot) -> list[PciDevice]:
    """Display-class devices of every vendor (the caller tells Intel's from the others)."""
    return [d for d in devices(root) if d.cls >> 16 == DISPLAY_CLASS]


def _hex(text: str | None) -> int | None:
    try:
        return int(text.strip(), 16) if text else None
    except ValueError:
        return None
