#!/usr/bin/env python3
"""Write the seed corpora in corpus/<target>/seed-* (README.md).

Seeds are hand-built, small, and each reaches a different part of its
parser: a good exchange or file first, then the usual faults. Files the
fuzzer found (regressions, crash-*) live beside them and are not touched.
Run from anywhere: python3 tests/fuzz/seeds.py
"""
import os
import struct
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))


def put(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


# ---- scripted transport events (fuzz_transport.h) ----
def ok():  # an OUT that takes every byte, or a reset that works
    return b"\x00"


def reply(data):  # an IN (bulk or control) with these bytes
    if isinstance(data, str):
        data = data.encode()
    if len(data) > 255:
        return bytes([0x10, len(data) - 256]) + data
    return bytes([0x00, len(data)]) + data


def err(i):  # completes with complete_errors[i] (0 ENODEV, 1 EPIPE, 2 EIO, ...)
    return bytes([0xA0 | i])


def short(n):
    return b"\x80" + struct.pack("<H", n)


HANG = b"\xff"


def fastboot():
    # h: chunk = 1 + (h & 0x3f) * 64, ops = 1 + (h >> 6); per op o, a
    put("fastboot", "getvar-okay", b"\x00" + b"\x00\x00" + ok() + reply("OKAY0x10000000"))
    put("fastboot", "info-then-okay",
        b"\x00" + b"\x04\x00" + ok() + reply("INFOerasing") + reply("TEXTstill") + reply("OKAY"))
    put("fastboot", "fail", b"\x00" + b"\x01\x00" + ok() + reply("FAILpartition does not exist"))
    # download 4096 bytes (u16 4095) in chunks of 4033
    put("fastboot", "download",
        b"\x3f" + b"\x02\x00" + struct.pack("<H", 4095) + ok() + reply("DATA00001000") + ok() + ok()
        + reply("OKAY"))
    # three ranges: 8*a, b, 16*c bytes = 64 + 3 + 32 = 99
    put("fastboot", "download-iov",
        b"\x01" + b"\x03\x00" + bytes([8, 3, 2]) + ok() + reply("DATA00000063") + ok() + ok() + ok()
        + reply("INFOwriting") + reply("OKAY"))
    put("fastboot", "bad-data-reply",
        b"\x00" + b"\x02\x00" + struct.pack("<H", 15) + ok() + reply("DATA0000001g"))
    put("fastboot", "garbage-and-overflow",
        b"\x40" + b"\x00\x00" + ok() + reply(b"\x01\x02garbage") + b"\x00\x00" + ok()
        + reply("OKAY" + "x" * 300))
    put("fastboot", "silence", b"\x00" + b"\x00\x00" + ok() + HANG)
    put("fastboot", "short-write-stall",
        b"\x40" + b"\x00\x00" + short(3) + b"\x02\x00" + struct.pack("<H", 99) + ok()
        + reply("DATA00000064") + err(1))
    # four ops; hooks: abort on the first INFO, abort (ENODEV) on the first progress
    # call, close on the first INFO
    put("fastboot", "hooks",
        b"\xc0" + b"\x00\x01" + ok() + reply("INFOa") + b"\x02\x02" + struct.pack("<H", 99) + ok()
        + reply("DATA00000064") + ok() + b"\x00\x03" + ok() + reply("INFOb"))


# ---- DFU ----
def status(state, st=0, poll=0):
    return reply(struct.pack("<BI", st, poll)[:4] + bytes([state, 0]))


def dfu_hdr(b0, b1, b2, b3, hook=0, segs=((0, 128),), alt_name=None):
    out = bytes([b0, b1, b2, b3])
    if alt_name is not None:
        out += alt_name.encode() + b"\x00"
    out += bytes([hook, len(segs) - 1])
    for addr, ln in segs:
        out += struct.pack("<IH", addr, ln - 1)
    return out


def pattern(off, n):
    return bytes(((i * 131 + 7) & 0xFF) for i in range(off, off + n))


def dfu():
    IDLE, DNIDLE, DNBUSY, MANWAIT, ERROR, MANIFEST = 2, 5, 4, 8, 10, 7
    # b0: 0x40 run-time, 0x10 DfuSe, low bits bmAttributes; b1: wTransferSize 64 (0x3f)
    # b2: alts - 1, op << 2 (0 dl, 1 verify, 2 detach, 3 leave), alt << 4; b3: 0x80 reset
    put("dfu", "download-tolerant",
        dfu_hdr(0x05, 0x3f, 0x00, 0x00) + ok() + status(IDLE) + ok() + status(DNIDLE) + ok()
        + status(DNBUSY) + status(DNIDLE) + ok() + status(IDLE))
    put("dfu", "download-reset",
        dfu_hdr(0x01, 0x3f, 0x00, 0x80, segs=((0, 64),)) + ok() + status(ERROR, 3) + ok()
        + status(IDLE) + ok() + status(DNIDLE) + ok() + status(MANIFEST) + status(MANWAIT) + ok())
    put("dfu", "download-errwrite",
        dfu_hdr(0x01, 0x3f, 0x00, 0x00, segs=((0, 64),)) + ok() + status(IDLE) + ok()
        + status(ERROR, 3) + ok())
    put("dfu", "verify",
        dfu_hdr(0x02, 0x3f, 0x04, 0x00, segs=((0, 100),)) + ok() + status(DNIDLE) + ok()
        + status(IDLE) + reply(pattern(0, 64)) + reply(pattern(64, 36)))
    put("dfu", "verify-differs",
        dfu_hdr(0x02, 0x3f, 0x04, 0x00, segs=((0, 64),)) + ok() + status(IDLE)
        + reply(pattern(0, 10) + b"\x00" * 54) + ok())
    put("dfu", "detach-will-detach", dfu_hdr(0x48, 0x3f, 0x08, 0x00) + ok())
    put("dfu", "detach-reset", dfu_hdr(0x40, 0x3f, 0x08, 0x80) + ok() + ok())
    put("dfu", "detach-in-dfu", dfu_hdr(0x00, 0x3f, 0x08, 0x00) + status(IDLE))
    put("dfu", "dfuse-download",
        dfu_hdr(0x11, 0x3f, 0x01, 0x00, segs=((1, 100), (0x201, 20)))
        + ok() + status(IDLE) + ok() + status(DNBUSY) + status(DNIDLE)
        + (ok() + status(DNIDLE)) * 6 + ok())
    put("dfu", "dfuse-verify",
        dfu_hdr(0x12, 0x3f, 0x05, 0x00, segs=((1, 70),)) + ok() + status(IDLE) + ok()
        + status(DNIDLE) + ok() + reply(pattern(0, 64)) + reply(pattern(64, 6)) + ok())
    put("dfu", "dfuse-leave",
        dfu_hdr(0x11, 0x3f, 0x0c, 0x00, segs=((1, 1),)) + ok() + status(IDLE) + ok()
        + status(DNIDLE) + ok() + err(0))
    put("dfu", "dfuse-own-layout",
        dfu_hdr(0x11, 0x07, 0x80, 0x00, segs=((0x20000000, 40),),
                alt_name="@RAM /0x20000000/2*16 g,1*01Kg")
        + ok() + status(IDLE) + (ok() + status(DNIDLE)) * 9 + ok())
    put("dfu", "stall-and-silence",
        dfu_hdr(0x01, 0x3f, 0x00, 0x00) + ok() + status(IDLE) + err(1) + ok())
    put("dfu", "silence", dfu_hdr(0x05, 0x3f, 0x00, 0x00) + ok() + HANG)
    put("dfu", "hook-close",
        dfu_hdr(0x05, 0x3f, 0x00, 0x30) + ok() + status(IDLE) + ok() + status(DNIDLE))


# ---- USB descriptors ----
def config_desc(*parts):
    body = b"".join(parts)
    total = 9 + len(body)
    return struct.pack("<BBHBBBBB", 9, 2, total, 1, 1, 0, 0x80, 50) + body


def iface(num, alt, cls, sub, proto, istr, neps=0):
    return bytes([9, 4, num, alt, neps, cls, sub, proto, istr])


def func(attrs, detach, size, bcd=None):
    if bcd is None:
        return struct.pack("<BBBHH", 7, 0x21, attrs, detach, size)
    return struct.pack("<BBBHHH", 9, 0x21, attrs, detach, size, bcd)


def ep(addr, attrs=2, size=512):
    return struct.pack("<BBBBHB", 7, 5, addr, attrs, size, 0)


def usb_desc():
    def seed(name, desc, strings, alt_arg):
        out = struct.pack("<H", len(desc)) + desc
        out += b"".join(s.encode() + b"\x00" for s in strings) + alt_arg.encode()
        put("usb_desc", name, out)

    seed("dfuse-two-alts",
         config_desc(iface(0, 0, 0xFE, 1, 2, 4), iface(0, 1, 0xFE, 1, 2, 5),
                     func(0x0B, 255, 2048, 0x011A)),
         ["@Internal Flash  /0x08000000/04*016Kg,01*064Kg,07*128Kg",
          "@Option Bytes  /0x1FFFC000/01*016 e"], "Internal Flash")
    seed("runtime",
         config_desc(iface(0, 0, 0xFF, 0x42, 3, 0, 2), ep(0x81), ep(0x01),
                     iface(1, 0, 0xFE, 1, 1, 0), func(0x0F, 1000, 1024)),
         [""], "0")
    seed("plain-dfu-mode",
         config_desc(iface(0, 0, 0xFE, 1, 2, 0), func(0x07, 0, 64, 0x0110)), ["firmware"],
         "firmware")
    seed("sram-regions",
         config_desc(iface(0, 0, 0xFE, 1, 2, 6), func(0x0B, 255, 1024, 0x011A)),
         ["@SRAM /0x20000000/64*001Ke/0x20010000/2*32Kg/0x20030000/1*1Mg"], "SRAM")
    seed("other-iface-between",
         config_desc(iface(0, 0, 0xFE, 1, 2, 4), iface(1, 0, 0x08, 6, 0x50, 0, 1), ep(0x82),
                     iface(0, 1, 0xFE, 1, 2, 5), func(0x03, 0, 4096, 0x011A)),
         ["@Flash/0x0/8*128Kg", "@EEPROM /0x08080000/1*4Ke"], "1")


# ---- DFU files ----
def dfu_crc(data):
    return ~zlib.crc32(data) & 0xFFFFFFFF


def suffix(data, vid=0x0483, pid=0xDF11, bcd_dev=0, bcd_dfu=0x0100):
    s = struct.pack("<HHHH", bcd_dev, pid, vid, bcd_dfu) + b"UFD" + bytes([16])
    return s + struct.pack("<I", dfu_crc(data + s))


def dfuse_file(targets, with_suffix_size=True):
    body = b""
    for alt, name, elements in targets:
        els = b"".join(struct.pack("<II", a, len(d)) + d for a, d in elements)
        nm = name.encode().ljust(255, b"\x00")
        body += b"Target" + bytes([alt]) + struct.pack("<I", 1 if name else 0) + nm
        body += struct.pack("<II", len(els), len(elements)) + els
    size = 11 + len(body) + (16 if with_suffix_size else 0)
    prefix = b"DfuSe" + bytes([1]) + struct.pack("<I", size) + bytes([len(targets)])
    data = prefix + body
    return data + suffix(data, bcd_dfu=0x011A)


def dfu_file():
    fw = bytes(range(48))
    put("dfu_file", "raw-allowed", b"\x08" + fw)
    put("dfu_file", "suffix", b"\x04" + fw + suffix(fw))
    put("dfu_file", "suffix-any-ids", b"\x00" + fw + suffix(fw, vid=0xFFFF, pid=0xFFFF))
    put("dfu_file", "dfuse-one-target",
        b"\x06" + dfuse_file([(0, "Internal Flash", [(0x08000000, fw), (0x08004000, fw[:8])])]))
    put("dfu_file", "dfuse-two-targets",
        b"\x16" + dfuse_file([(0, "Internal Flash", [(0x08000000, fw)]),
                              (1, "Option Bytes", [(0x1FFFC000, fw[:16])])], False))
    put("dfu_file", "raw-on-dfuse", b"\x2e" + fw)
    put("dfu_file", "bad-crc", b"\x04" + fw + suffix(fw)[:-1] + b"\x00")


# ---- sparse images ----
def sparse(bs, total_blks, chunks):
    out = b""
    for typ, blks, data in chunks:
        out += struct.pack("<HHII", typ, 0, blks, 12 + len(data)) + data
    hdr = struct.pack("<IHHHHIIII", 0xED26FF3A, 1, 0, 28, 12, bs, total_blks, len(chunks), 0)
    return hdr + out


RAW, FILL, SKIP, CRC = 0xCAC1, 0xCAC2, 0xCAC3, 0xCAC4


def noise(n, seed):
    x = seed
    out = bytearray()
    for _ in range(n):
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        out.append(x >> 16 & 0xFF)
    return bytes(out)


def sparse_seeds():
    # first byte: limit = 16 KiB << (b % 9)
    put("sparse", "raw-small", b"\x00" + noise(5000, 1))
    put("sparse", "sparse-fill-skip",
        b"\x00" + sparse(4096, 300, [(FILL, 100, b"\xaa\xbb\xcc\xdd"), (SKIP, 150, b""),
                                     (FILL, 50, b"\x00\x00\x00\x00")]))
    put("sparse", "sparse-raw-split",
        b"\x00" + sparse(4096, 8, [(RAW, 3, noise(3 * 4096, 2)), (SKIP, 1, b""),
                                   (RAW, 2, noise(2 * 4096, 3)), (FILL, 2, b"\x01\x02\x03\x04")]))
    put("sparse", "sparse-crc-small-blocks",
        b"\x01" + sparse(1024, 12, [(RAW, 2, noise(2048, 4)), (CRC, 0, b"\x00\x00\x00\x00"),
                                    (SKIP, 10, b"")]))


def vfb_sparse():
    # ctl: bit 0 keep bytes, bit 1 a second image (u16 length of the first), bits 2-3 start
    img = sparse(4, 20, [(RAW, 2, b"abcdefgh"), (FILL, 5, b"\x11\x22\x33\x44"), (SKIP, 3, b""),
                         (CRC, 0, b"\x00\x00\x00\x00"), (RAW, 10, noise(40, 6))])
    put("vfb_sparse", "keep", b"\x01" + img)
    put("vfb_sparse", "no-keep", b"\x00" + img)
    second = sparse(4, 20, [(SKIP, 18, b""), (RAW, 2, b"ZZZZYYYY")])
    put("vfb_sparse", "two-pieces", b"\x03" + struct.pack("<H", len(img)) + img + second)
    put("vfb_sparse", "onto-raw", b"\x09" + sparse(4096, 1, [(FILL, 1, b"\x00\x00\x00\x01")]))
    put("vfb_sparse", "empty-image", b"\x05" + sparse(4, 0, []))


# ---- station.ini and recipes (fixtures written by the harnesses) ----
def config():
    put("config", "full", """; station
[station]
id = fuzz-station
db = station.db                 ; relative
max_sessions = 16
ui = headless
minisign_key = station.pub
require_signatures = yes

[slot A1]
path = 1-4.1
[slot A2]
path = 1-4.2
path = 1-4.3
[slot B]
path = 1-5.*
[slot net]
path = tcp:127.0.0.1:5554

[profile phone]
match = usb 18d1:4ee0
match = class FF/42/03
match = tcp:[::1]:5554
recipe = phone.recipe
serial_policy = reflash
retries = 2
timeout = 1500ms
min_rate = 1M

[profile board]
match = usb 0483:df11
protocol = dfu
recipe = board.recipe
timeout = 2s

[simulate]
count = 8
pace = 0.5
plug_interval = 200ms
replug = 1500
fault = 3:fail=flash:system
fault_rate = 0.05
seed = 42
max_download = 256M
profile = phone
""")
    put("config", "minimal", "[profile p]\nmatch = class FF/42/03\nrecipe = phone.recipe\n")
    put("config", "globs", "\ufeff[slot s]\r\n  path = 2-1.[1-4]\r\npath = virt-07\r\n"
        "[slot t]\npath = 1-?.1\n")
    put("config", "errors", "[station]\nid = a b\n[slot]\n[profile x]\nmatch = usb 18d1\n")
    put("config", "simulate-only", "[simulate]\ncount = 4\n[profile p]\nmatch = tcp:host:1\n"
        "recipe = board.recipe\nprotocol = fastboot\n")


def recipe():
    put("recipe", "phone", """# phone
recipe demo-phone 1.1+git~1
protocol fastboot
image boot   boot.img   sha256=95823b3286431bee3c8809bd0361cbccef18511f13857c1287fa35775ebd3215
image system system.img
require product=simphone|simphone-pro   timeout=2s
getvar serialno
flash boot boot                              retries=1
flash system system                          timeout=60s retries=2
erase userdata
set-active b
oem unlock now
reboot bootloader
reboot
""")
    put("recipe", "board", """recipe demo-board 0.3
protocol dfu
allow-raw-dfu
image firmware fw.bin
dfu-download 0 firmware        timeout=10s
dfu-verify Internal-Flash firmware
detach
""")
    put("recipe", "errors", "recipe x 1\nflash boot nosuch\ncontinue\n")
    put("recipe", "crlf-tabs", "recipe\tr\t1\r\n\timage a boot.img\r\nrequire v=1|2|3 retries=0\r\n"
        "flash p a # comment\r\n")
    put("recipe", "mixed", "recipe m 1\nprotocol dfu\nflash boot boot\n")


def trust():
    key = ("untrusted comment: minisign public key 755F26D21D2188F4\n"
           "RWT0iCEd0iZfdYJ9x7fhmvFq1ZPAjgdcldYwOEmWksDVO9yfDHTtr9+p\n")
    put("trust", "pubkey", key)
    put("trust", "pubkey-bare", "RWT0iCEd0iZfdYJ9x7fhmvFq1ZPAjgdcldYwOEmWksDVO9yfDHTtr9+p\r\n")
    put("trust", "sig-prehashed", """untrusted comment: signature from minisign secret key
RUT0iCEd0iZfdRXp9SO/f6QTBv9rNgjYUqmUrtluEURcrw/pts04k24bzccEM6qG0U5UyvKUqXBcSmew01vbKWmsdCoYp65TkQw=
trusted comment: fuzz seed
C95mcJOvsuew7waP4ztLkgKWXOYjEi/XcKX43q9luu+JxPvYcKhQdgO8SdujYCnqkWCFvIRXLYNb8Ni5qA+qBw==
""")
    put("trust", "sig-legacy", """untrusted comment: signature from minisign secret key
RWT0iCEd0iZfdddhtC/p2Nn3PUhu55msJoUFPKM3d5Qtv7AsLsKE+dnSiUTP0sX9Bi8UYp9hyKWp5+gUSrr8dQ+KzgNLMbKJigs=
trusted comment: fuzz legacy
4B4Vj6Xm0JdBnN2zTr2YzNT8llhMwSCkHNV1BL+V9OCqZRuxr9kSNzOuK93oFKTClSNGnlP8ZIDus8tt1VVRDA==
""")
    put("trust", "sig-bad-comment", """untrusted comment: signature from minisign secret key
RUT0iCEd0iZfdRXp9SO/f6QTBv9rNgjYUqmUrtluEURcrw/pts04k24bzccEM6qG0U5UyvKUqXBcSmew01vbKWmsdCoYp65TkQw=
trusted comment: changed
C95mcJOvsuew7waP4ztLkgKWXOYjEi/XcKX43q9luu+JxPvYcKhQdgO8SdujYCnqkWCFvIRXLYNb8Ni5qA+qBw==
""")


if __name__ == "__main__":
    fastboot()
    dfu()
    usb_desc()
    dfu_file()
    sparse_seeds()
    vfb_sparse()
    config()
    recipe()
    trust()
