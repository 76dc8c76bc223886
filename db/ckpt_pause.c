/*
 * ckpt_pause.c: a test hook that stops the station inside a WAL checkpoint,
 * so that tests/test_crash.c can kill -9 it there on purpose rather than by
 * luck.
 *
 * It is a VFS that passes every call through to SQLite's default one and
 * watches the main database file: SQLite announces a checkpoint to that
 * file (SQLITE_FCNTL_CKPT_START, before it copies the first frame from the
 * WAL into the database, and SQLITE_FCNTL_CKPT_DONE after the last one,
 * before the -shm records them as copied). After the page-th page written
 * in between, or at the DONE of a checkpoint with fewer pages, the marker
 * file is created and the thread sleeps. Once per database handle; the
 * checkpoint then goes on as usual.
 *
 * Only db_open() uses it, and only when STATION_TEST_CHECKPOINT_PAUSE_MS is
 * set: a station in production never opens its database through it.
 */
#include "db/db_internal.h"

#include "st_error.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

struct db__pause {
    sqlite3_vfs vfs; /* first: a sqlite3_vfs * is a struct db__pause * */
    sqlite3_vfs *real;
    char name[48];
    char *marker;
    unsigned ms, page;
    bool registered;
    bool done; /* written only by the thread inside the checkpoint */
};

/* The wrapper SQLite allocates (vfs.szOsFile bytes): ours, then the real
 * file, which the default VFS fills in. */
struct pause_file {
    sqlite3_file base;
    struct db__pause *p;
    sqlite3_file *real;
    bool main_db;
    bool in_checkpoint;
    unsigned written; /* pages written in this checkpoint */
};

#define REAL(f) (((struct pause_file *)(f))->real)

/* `offset` < 0: after the last page, before the -shm is updated. The
 * thread id tells the writer's checkpoint from the one of the close. */
static void pause_now(struct db__pause *p, unsigned pages, sqlite3_int64 offset)
{
    long pid = (long)getpid(), tid = (long)syscall(SYS_gettid);
    char line[160];
    int fd, n;

    p->done = true;
    if (offset >= 0)
        n = snprintf(line, sizeof line,
                     "pid %ld tid %ld paused in a checkpoint after page %u (offset %lld)\n", pid,
                     tid, pages, (long long)offset);
    else
        n = snprintf(line, sizeof line,
                     "pid %ld tid %ld paused in a checkpoint after its last page (%u), before"
                     " the -shm records it\n",
                     pid, tid, pages);
    /* Written aside and renamed into place: the test kills as soon as
     * the marker exists, so it must never see it empty. */
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", p->marker);
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    bool ok = fd >= 0 && write(fd, line, (size_t)n) == n;
    if (fd >= 0 && close(fd) != 0)
        ok = false;
    if (!ok || rename(tmp, p->marker) != 0)
        fprintf(stderr, "checkpoint pause: cannot write %s\n", p->marker);
    uv_sleep(p->ms);
}

static int pause_close(sqlite3_file *f)
{
    return REAL(f)->pMethods->xClose(REAL(f));
}

static int pause_read(sqlite3_file *f, void *buf, int n, sqlite3_int64 off)
{
    return REAL(f)->pMethods->xRead(REAL(f), buf, n, off);
}

static int pause_write(sqlite3_file *f, const void *buf, int n, sqlite3_int64 off)
{
    struct pause_file *pf = (struct pause_file *)f;
    int rc = pf->real->pMethods->xWrite(pf->real, buf, n, off);

    if (rc == SQLITE_OK && pf->in_checkpoint && !pf->p->done && ++pf->written >= pf->p->page)
        pause_now(pf->p, pf->written, off);
    return rc;
}

static int pause_truncate(sqlite3_file *f, sqlite3_int64 size)
{
    return REAL(f)->pMethods->xTruncate(REAL(f), size);
}

static int pause_sync(sqlite3_file *f, int flags)
{
    return REAL(f)->pMethods->xSync(REAL(f), flags);
}

static int pause_file_size(sqlite3_file *f, sqlite3_int64 *size)
{
    return REAL(f)->pMethods->xFileSize(REAL(f), size);
}

static int pause_lock(sqlite3_file *f, int level)
{
    return REAL(f)->pMethods->xLock(REAL(f), level);
}

static int pause_unlock(sqlite3_file *f, int level)
{
    return REAL(f)->pMethods->xUnlock(REAL(f), level);
}

static int pause_check_reserved(sqlite3_file *f, int *out)
{
    return REAL(f)->pMethods->xCheckReservedLock(REAL(f), out);
}

static int pause_file_control(sqlite3_file *f, int op, void *arg)
{
    struct pause_file *pf = (struct pause_file *)f;

    if (pf->main_db && op == SQLITE_FCNTL_CKPT_START) {
        pf->in_checkpoint = true;
        pf->written = 0;
    } else if (pf->main_db && op == SQLITE_FCNTL_CKPT_DONE) {
        if (pf->in_checkpoint && pf->written > 0 && !pf->p->done)
            pause_now(pf->p, pf->written, -1);
        pf->in_checkpoint = false;
    }
    return pf->real->pMethods->xFileControl(pf->real, op, arg);
}

static int pause_sector_size(sqlite3_file *f)
{
    return REAL(f)->pMethods->xSectorSize(REAL(f));
}

static int pause_device_characteristics(sqlite3_file *f)
{
    return REAL(f)->pMethods->xDeviceCharacteristics(REAL(f));
}

static int pause_shm_map(sqlite3_file *f, int page, int size, int extend, void volatile **pp)
{
    return REAL(f)->pMethods->xShmMap(REAL(f), page, size, extend, pp);
}

static int pause_shm_lock(sqlite3_file *f, int offset, int n, int flags)
{
    return REAL(f)->pMethods->xShmLock(REAL(f), offset, n, flags);
}

static void pause_shm_barrier(sqlite3_file *f)
{
    REAL(f)->pMethods->xShmBarrier(REAL(f));
}

static int pause_shm_unmap(sqlite3_file *f, int delete_flag)
{
    return REAL(f)->pMethods->xShmUnmap(REAL(f), delete_flag);
}

static int pause_fetch(sqlite3_file *f, sqlite3_int64 off, int n, void **pp)
{
    return REAL(f)->pMethods->xFetch(REAL(f), off, n, pp);
}

static int pause_unfetch(sqlite3_file *f, sqlite3_int64 off, void *p)
{
    return REAL(f)->pMethods->xUnfetch(REAL(f), off, p);
}

static const sqlite3_io_methods pause_methods = {
    .iVersion = 3,
    .xClose = pause_close,
    .xRead = pause_read,
    .xWrite = pause_write,
    .xTruncate = pause_truncate,
    .xSync = pause_sync,
    .xFileSize = pause_file_size,
    .xLock = pause_lock,
    .xUnlock = pause_unlock,
    .xCheckReservedLock = pause_check_reserved,
    .xFileControl = pause_file_control,
    .xSectorSize = pause_sector_size,
    .xDeviceCharacteristics = pause_device_characteristics,
    .xShmMap = pause_shm_map,
    .xShmLock = pause_shm_lock,
    .xShmBarrier = pause_shm_barrier,
    .xShmUnmap = pause_shm_unmap,
    .xFetch = pause_fetch,
    .xUnfetch = pause_unfetch,
};

static int pause_open(sqlite3_vfs *vfs, sqlite3_filename name, sqlite3_file *f, int flags,
                      int *out_flags)
{
    struct db__pause *p = (struct db__pause *)vfs;
    struct pause_file *pf = (struct pause_file *)f;
    int rc;

    memset(pf, 0, sizeof *pf);
    pf->p = p;
    pf->real = (sqlite3_file *)(pf + 1);
    pf->main_db = (flags & SQLITE_OPEN_MAIN_DB) != 0;
    rc = p->real->xOpen(p->real, name, pf->real, flags, out_flags);
    /* Every method above forwards blindly: only a version-3 file (the
     * default unix VFS opens nothing else) may be wrapped. */
    if (pf->real->pMethods && pf->real->pMethods->iVersion < 3) {
        pf->real->pMethods->xClose(pf->real);
        pf->real->pMethods = NULL;
        rc = SQLITE_CANTOPEN;
    }
    /* Set, close is called even when the open failed. */
    pf->base.pMethods = pf->real->pMethods ? &pause_methods : NULL;
    return rc;
}

int db__pause_new(const char *db_path, unsigned ms, unsigned page, struct db__pause **out)
{
    struct db__pause *p;
    sqlite3_vfs *real = sqlite3_vfs_find(NULL);
    int rc;

    if (!real)
        return ST_EDB;
    p = calloc(1, sizeof *p);
    if (!p)
        return ST_ENOMEM;
    p->marker = malloc(strlen(db_path) + sizeof ".checkpoint-paused");
    if (!p->marker) {
        free(p);
        return ST_ENOMEM;
    }
    sprintf(p->marker, "%s.checkpoint-paused", db_path);
    p->real = real;
    p->ms = ms;
    p->page = page ? page : 1;
    snprintf(p->name, sizeof p->name, "station-checkpoint-pause-%p", (void *)p);
    /* Everything but opening a file is the default VFS's own. */
    p->vfs = *real;
    /* pause_file holds pointers: the real file after it is aligned */
    p->vfs.szOsFile = (int)sizeof(struct pause_file) + real->szOsFile;
    p->vfs.zName = p->name;
    p->vfs.pNext = NULL;
    p->vfs.xOpen = pause_open;
    rc = sqlite3_vfs_register(&p->vfs, 0);
    if (rc != SQLITE_OK) {
        db__pause_free(p);
        return rc == SQLITE_NOMEM ? ST_ENOMEM : ST_EDB;
    }
    p->registered = true;
    *out = p;
    return 0;
}

const char *db__pause_vfs_name(const struct db__pause *p)
{
    return p->name;
}

void db__pause_free(struct db__pause *p)
{
    if (!p)
        return;
    if (p->registered)
        sqlite3_vfs_unregister(&p->vfs);
    free(p->marker);
    free(p);
}
