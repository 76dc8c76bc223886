/*
 * usbsim: virtual USB devices at the usbdevfs level, for tests.
 *
 * The harness builds a umockdev testbed (fake sysfs, udev and
 * /dev/bus/usb nodes), serves every usbfs call of every node itself, and
 * runs one command under it. Fastboot devices are the engine/virt model
 * eng_vfb (bulk endpoints); DFU devices are eng_vdfu (endpoint 0 only:
 * every control URB goes to eng_vdfu_control, USBDEVFS_RESET to
 * eng_vdfu_bus_reset, and the node re-enumerates when the model says so);
 * hubs exist so that port paths such as 1-1.4.2 resolve the way libusb,
 * lsusb, fastboot and dfu-util expect (shared/notes/usb-sim.md).
 *
 * Lifecycle: a port (struct sim_port) is declared on the command line or
 * implied by a hub path. A unit (struct sim_unit) is one physical device:
 * its model and serial; it survives re-enumeration. A node (struct
 * sim_node) is one enumeration of a unit on its port: sysfs entry, devnum,
 * the usbfs node and its URBs. Nodes are never freed before exit, because
 * a client may still talk to a node that has gone.
 *
 * Threads: usbfs calls arrive on umockdev's worker thread (usbsim_usbfs.c);
 * hotplug, re-enumeration and timers run on the main thread's GLib loop.
 * struct sim.lock guards every node, unit and model.
 */
#ifndef USBSIM_H
#define USBSIM_H

#include <glib.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <umockdev.h>

#include "engine/virt/vdfu.h"
#include "engine/virt/vfb.h"

#define SIM_PATH_MAX 32
#define SIM_DESC_MAX 256

struct sim;
struct sim_node;

struct sim_port {
    struct sim *sim;
    char path[SIM_PATH_MAX]; /* "1-1.4.2" */
    unsigned bus;
    unsigned depth; /* number of ports in the path; 0 for a root hub */
    bool hub;       /* root hub or a hub implied by a deeper path */
    /* fastboot ports */
    struct eng_vfb_config cfg; /* serial here is the base serial */
    uint16_t vid, pid, pid2;   /* pid2: the PID after re-enumeration */
    unsigned reenum_ms;        /* gone this long during re-enumeration */
    bool eacces;               /* opening the node fails with EACCES */
    bool baddesc;              /* an endpoint descriptor is malformed */
    bool stallctl;             /* every control request stalls */
    bool absent;               /* not plugged at start; --plug brings it */
    bool stay;                 /* stay enumerated (silent) after "reboot" */
    char driver[32];           /* a kernel driver bound at plug (e.g. usb-storage) */
    /* DFU ports (--dfu): the model's configuration instead of cfg */
    bool dfu;
    struct eng_vdfu_config dcfg; /* serial here is the base serial */
    bool keep;                   /* --stats also dumps each alt's memory */
    unsigned units;              /* units made for this port so far */
    /* state, main thread (read under the lock elsewhere) */
    struct sim_node *node; /* present enumeration, or NULL */
    struct sim_unit *unit; /* last unit plugged here */
};

struct sim_unit {
    struct sim_port *port;
    struct eng_vfb *vfb;   /* fastboot units */
    struct eng_vdfu *vdfu; /* DFU units */
    char serial[64];
    unsigned enumerations;
    bool alt_pid; /* enumerated with pid2 */
    /* arrival ("add" uevent) to first command, per enumeration (µs) */
    int64_t first_cmd_us[8];
    unsigned n_first_cmd;
    struct sim_unit *next; /* every unit ever made, for --stats */
};

struct sim_node {
    struct sim *sim;
    struct sim_port *port;
    struct sim_unit *unit; /* NULL for hubs */
    char syspath[200];     /* "/sys/devices/.../usb1/1-1.4.2" */
    char ifpath[320];      /* its interface 1-1.4.2:1.0 */
    char devnode[32];      /* "/dev/bus/usb/001/005" */
    char fifo_path[300];   /* the node inside the testbed */
    unsigned busnum, devnum;
    uint16_t vid, pid;
    uint8_t desc[SIM_DESC_MAX]; /* device descriptor + configuration */
    size_t desc_len;
    int fifo;               /* our end of the node FIFO (readiness) */
    bool ready;             /* FIFO drained: something to reap */
    bool gone;              /* unplugged: calls fail with ENODEV */
    bool leaving;           /* removal scheduled */
    bool removed;           /* sysfs entries deleted (main thread) */
    bool leave_after_reply; /* "reboot"/"continue": leave after its OKAY */
    bool driver_bound;      /* port.driver holds the interface until detached */
    int64_t plugged_at;     /* monotonic µs after the "add" uevent; 0 once used */
    UMockdevIoctlBase *handler;
    UMockdevIoctlClient *owner; /* the client that claimed the interface last */
    GQueue pending;             /* struct sim_urb: submitted, not complete */
    GQueue done;                /* struct sim_urb: complete, not reaped */
    int64_t busy_until;         /* pacing: the link is busy until then (µs) */
    GSource *timer;             /* wakes service() for pacing and timeouts */
    int64_t timer_due;
};

struct sim {
    GMutex lock;
    UMockdevTestbed *tb;
    GMainContext *main_ctx;
    GMainLoop *loop;
    char root[256];            /* the testbed's root directory */
    struct sim_unit *units;    /* every unit ever made, in order */
    unsigned next_devnum[128]; /* per bus, like the kernel: the next free one from here */
    bool devnum_used[128][128];
    bool verbose;
    int64_t t0; /* start, for log time stamps (µs) */
    /* usbfs memory accounting, like the kernel's usbfs_memory_mb: URB
     * buffers count from submission until reaped; 0 = no limit. */
    uint64_t usbfs_limit, usbfs_used;
};

/* usbsim_sysfs.c: descriptors and testbed records. */
void usbsim_build_descriptors(struct sim_node *n);
/* Add node n (its port and unit set) to the testbed: FIFO node, ioctl
 * handler, interface and device records (the device's "add" uevent last).
 * Returns 0, or -1 with a message in err. Main thread. */
int usbsim_sysfs_add(struct sim_node *n, char *err, size_t errlen);
/* Send "remove" uevents and delete the node's sysfs entries. Main thread. */
void usbsim_sysfs_remove(struct sim_node *n);
/* The strings a node reports: index 1 manufacturer, 2 product, 3 serial,
 * 4 interface (DFU: 4 + n is the name of alt n). NULL for an unknown
 * index. */
const char *usbsim_string(const struct sim_node *n, unsigned index);

/* usbsim_usbfs.c: serving usbfs calls. */
/* Connect the node's ioctl handler signals. */
void usbsim_usbfs_attach(struct sim_node *n);
/* Put the node FIFO into "nothing to reap" state; 0 or -errno. */
int usbsim_fifo_open(struct sim_node *n);
/* The node has gone: pending URBs complete with -ENODEV, later calls fail
 * with ENODEV. Lock held. */
void usbsim_node_gone_locked(struct sim_node *n);

/* usbsim.c: hotplug actions the usbfs side schedules on the main loop. */
enum sim_action { SIM_UNPLUG, SIM_REENUMERATE };
void usbsim_schedule(struct sim_node *n, enum sim_action what, unsigned ms);
void usbsim_log(struct sim *s, const char *fmt, ...) G_GNUC_PRINTF(2, 3);

#endif
