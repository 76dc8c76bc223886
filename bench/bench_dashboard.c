/*
 * bench_dashboard: the CPU the dashboard costs. 128 virtual slots run
 * synthetic sessions (two getvars, flash 1 MiB and 4 MiB with progress
 * every 100 ms, as the engine sends it, reboot; one in twenty fails) that
 * update the model on the loop; once without a dashboard, once with it
 * drawing at its 10 redraws a second into a fake terminal (newterm() on
 * /dev/null, resized to the size under test). The difference is the
 * dashboard's cost, in percent of one core.
 *
 *   build/bench/bench_dashboard [SECONDS [SLOTS]]     (default 5 s, 128 slots)
 *
 * Each run is a child process; CPU is getrusage() around the loop only.
 * Prints a markdown table; never fails.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "ui/dashboard.h"
#include "ui/model.h"

struct vslot {
    char name[16], serial[32];
    int phase;       /* 0 empty, 1..5 steps, 6 saving */
    int64_t next_ms; /* when the phase ends */
    int64_t phase_start;
    int64_t last_progress;
    int64_t session;
    int64_t started;
};

struct bench {
    uv_loop_t loop;
    uv_timer_t tick, stop;
    struct ui_model model;
    struct vslot *slots;
    unsigned n;
    unsigned long events;
    unsigned units;
    int64_t next_session;
};

static const struct eng_image_info images[] = {
    {"boot", "(demo)", "", 1u << 20, false},
    {"system", "(demo)", "", 4u << 20, false},
};
static const char *const step_names[] = {"",           "getvar:product", "getvar:serialno",
                                         "flash:boot", "flash:system",   "reboot"};
static const int step_ms[] = {500, 40, 40, 1000, 4000, 150};
static const uint64_t step_bytes[] = {0, 0, 0, 1u << 20, 4u << 20, 0};

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void emit(struct bench *b, struct vslot *v, enum eng_event_type type, int64_t now,
                 struct eng_event *ev)
{
    ev->type = type;
    ev->t_ms = now;
    ev->slot = v->name;
    ev->port = v->name;
    ev->serial = v->serial;
    ev->usb_serial = v->serial;
    ev->session_id = v->session;
    ev->session_started_ms = v->started;
    ev->step_count = 5;
    ev->recipe = "demo-phone";
    ev->recipe_version = "1.0";
    ev->n_images = 2;
    ev->images = images;
    ui_model_event(&b->model, ev);
    b->events++;
}

static void advance(struct bench *b, struct vslot *v, int64_t now)
{
    struct eng_event ev;
    memset(&ev, 0, sizeof(ev));
    if (v->phase >= 1 && v->phase <= 5) {
        ev.step = step_names[v->phase];
        ev.step_index = (unsigned)v->phase - 1;
        ev.step_started_ms = v->phase_start;
        ev.bytes_done = step_bytes[v->phase];
        bool fail = v->phase == 4 && v->session % 20 == 7;
        ev.result = fail ? ENG_RESULT_FAIL : ENG_RESULT_PASS;
        ev.text = fail ? "flash: device replied FAIL: injected fault" : "";
        emit(b, v, ENG_EV_STEP_END, now, &ev);
        if (fail || v->phase == 5) {
            memset(&ev, 0, sizeof(ev));
            ev.result = fail ? ENG_RESULT_FAIL : ENG_RESULT_PASS;
            ev.failed_step = fail ? "flash:system" : NULL;
            ev.text = fail ? "flash:system: flash: device replied FAIL: injected fault" : "";
            ev.session_bytes = fail ? 1u << 20 : 5u << 20;
            emit(b, v, ENG_EV_SESSION_END, now, &ev);
            /* the commit callback, a moment later in the station */
            ui_model_committed(&b->model, v->name, ev.result, ev.text, now);
            b->units++;
            v->phase = 0;
            v->next_ms = now + step_ms[0];
            return;
        }
        v->phase++;
    } else {
        /* a fresh unit: arrives, session begins */
        snprintf(v->serial, sizeof(v->serial), "SIMBENCH%06u", (unsigned)b->next_session);
        v->session = b->next_session++;
        v->started = now;
        emit(b, v, ENG_EV_ARRIVED, now, &ev);
        memset(&ev, 0, sizeof(ev));
        emit(b, v, ENG_EV_SESSION_BEGIN, now, &ev);
        v->phase = 1;
    }
    memset(&ev, 0, sizeof(ev));
    v->phase_start = now;
    v->last_progress = now;
    ev.step = step_names[v->phase];
    ev.step_index = (unsigned)v->phase - 1;
    ev.step_started_ms = now;
    emit(b, v, ENG_EV_STEP_BEGIN, now, &ev);
    if (v->phase == 4 && v->session % 11 == 3) {
        memset(&ev, 0, sizeof(ev));
        ev.step = step_names[v->phase];
        ev.text = "Writing 'system'... partition table OK";
        emit(b, v, ENG_EV_INFO, now, &ev);
    }
    v->next_ms = now + step_ms[v->phase];
}

static void on_tick(uv_timer_t *t)
{
    struct bench *b = t->data;
    int64_t now = wall_ms();
    for (unsigned i = 0; i < b->n; i++) {
        struct vslot *v = &b->slots[i];
        if (now >= v->next_ms) {
            advance(b, v, now);
            continue;
        }
        if (step_bytes[v->phase] && now - v->last_progress >= 100) {
            struct eng_event ev;
            memset(&ev, 0, sizeof(ev));
            ev.step = step_names[v->phase];
            ev.step_index = (unsigned)v->phase - 1;
            ev.step_started_ms = v->phase_start;
            ev.bytes_total = step_bytes[v->phase];
            ev.bytes_done =
                ev.bytes_total * (uint64_t)(now - v->phase_start) / (uint64_t)step_ms[v->phase];
            emit(b, v, ENG_EV_PROGRESS, now, &ev);
            v->last_progress = now;
        }
    }
}

static void on_stop(uv_timer_t *t)
{
    uv_stop(t->loop);
}

static double cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

struct result {
    double cpu, wall;
    unsigned long events, redraws;
    unsigned units;
    int ok;
};

/* One run in this (child) process. cols == 0: no dashboard. */
static struct result one(unsigned n, double secs, int cols, int lines)
{
    struct result r;
    struct bench b;
    struct ui_dash *dash = NULL;
    memset(&r, 0, sizeof(r));
    memset(&b, 0, sizeof(b));
    uv_loop_init(&b.loop);
    ui_model_init(&b.model);
    ui_model_set_station(&b.model, "bench", "demo-phone", "1.0", wall_ms());
    b.n = n;
    b.slots = calloc(n, sizeof(*b.slots));
    int64_t now = wall_ms();
    for (unsigned i = 0; i < n; i++) {
        snprintf(b.slots[i].name, sizeof(b.slots[i].name), "virt-%03u", i + 1);
        b.slots[i].next_ms = now + (int64_t)(i * 4129 % 5000); /* staggered */
    }
    b.next_session = 1;
    FILE *devnull = NULL;
    if (cols) {
        devnull = fopen("/dev/null", "w");
        struct ui_dash_options o = {.in_fd = -1,
                                    .out = devnull,
                                    .term = "xterm-256color",
                                    .cols = cols,
                                    .lines = lines,
                                    .no_signals = true};
        if (!devnull || ui_dash_new(&b.loop, &b.model, &o, NULL, NULL, &dash) != 0) {
            fprintf(stderr, "bench_dashboard: cannot set up the fake terminal\n");
            return r;
        }
    }
    uv_timer_init(&b.loop, &b.tick);
    uv_timer_init(&b.loop, &b.stop);
    b.tick.data = &b;
    uv_timer_start(&b.tick, on_tick, 10, 10);
    uv_timer_start(&b.stop, on_stop, (uint64_t)(secs * 1000), 0);
    unsigned long redraws0 = dash ? ui_dash_redraws(dash) : 0;
    double c0 = cpu_s();
    int64_t w0 = wall_ms();
    uv_run(&b.loop, UV_RUN_DEFAULT);
    r.cpu = cpu_s() - c0;
    r.wall = (double)(wall_ms() - w0) / 1000.0;
    r.redraws = dash ? ui_dash_redraws(dash) - redraws0 : 0;
    r.events = b.events;
    r.units = b.units;
    r.ok = 1;
    uv_close((uv_handle_t *)&b.tick, NULL);
    uv_close((uv_handle_t *)&b.stop, NULL);
    if (dash)
        ui_dash_close(dash, NULL, NULL);
    uv_run(&b.loop, UV_RUN_DEFAULT);
    ui_dash_free(dash);
    if (devnull)
        fclose(devnull);
    uv_loop_close(&b.loop);
    ui_model_free(&b.model);
    free(b.slots);
    return r;
}

static struct result in_child(unsigned n, double secs, int cols, int lines, const char *locale)
{
    struct result r;
    int fd[2];
    memset(&r, 0, sizeof(r));
    if (pipe(fd) != 0)
        return r;
    pid_t pid = fork();
    if (pid == 0) {
        close(fd[0]);
        setenv("LC_ALL", locale, 1);
        r = one(n, secs, cols, lines);
        ssize_t w = write(fd[1], &r, sizeof(r));
        _exit(w == (ssize_t)sizeof(r) ? 0 : 1);
    }
    close(fd[1]);
    if (read(fd[0], &r, sizeof(r)) != (ssize_t)sizeof(r))
        memset(&r, 0, sizeof(r));
    close(fd[0]);
    waitpid(pid, NULL, 0);
    return r;
}

int main(int argc, char **argv)
{
    double secs = argc > 1 ? atof(argv[1]) : 5.0;
    unsigned n = argc > 2 ? (unsigned)atoi(argv[2]) : 128;
    static const struct {
        int cols, lines;
        const char *locale;
    } sizes[] = {
        {200, 60, "C.UTF-8"},
        {120, 40, "C.UTF-8"},
        {80, 24, "C.UTF-8"},
        {200, 60, "C"},
    };
    if (secs <= 0 || n == 0) {
        fprintf(stderr, "usage: bench_dashboard [SECONDS [SLOTS]]\n");
        return 2;
    }
    printf("bench_dashboard: %u virtual slots, %.0f s per run, synthetic sessions "
           "(progress every 100 ms per transferring slot)\n\n",
           n, secs);
    struct result base = in_child(n, secs, 0, 0, "C");
    if (!base.ok) {
        printf("baseline run failed\n");
        return 0;
    }
    printf("| terminal | charset | redraws/s | events/s | CPU without | CPU with | dashboard "
           "costs |\n");
    printf("| --- | --- | ---: | ---: | ---: | ---: | ---: |\n");
    double worst = 0;
    for (unsigned i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        struct result r = in_child(n, secs, sizes[i].cols, sizes[i].lines, sizes[i].locale);
        if (!r.ok) {
            printf("| %dx%d | %s | run failed | | | | |\n", sizes[i].cols, sizes[i].lines,
                   sizes[i].locale);
            continue;
        }
        double without = 100.0 * base.cpu / base.wall, with = 100.0 * r.cpu / r.wall;
        double cost = with - without;
        if (cost > worst)
            worst = cost;
        printf("| %dx%d | %s | %.1f | %.0f | %.2f %% | %.2f %% | %.2f %% of a core |\n",
               sizes[i].cols, sizes[i].lines, strcmp(sizes[i].locale, "C") ? "UTF-8" : "ASCII",
               (double)r.redraws / r.wall, (double)r.events / r.wall, without, with, cost);
    }
    printf("\nworst dashboard cost: %.2f %% of one core (target: under 3 %%)\n", worst);
    return 0;
}
