/* pool.c: the worker threads that every parallel kernel runs on.
 *
 * A decode step calls a parallel kernel every few tens of microseconds (a
 * GPT-2 token: ~50 projections), and between two calls the caller runs
 * Python and NumPy code. What an idle worker does in that gap decides what
 * the next call costs:
 *   - sleeping (futex), it takes long to wake, a large share of a small
 *     projection's time;
 *   - polling, it answers at once, but holds a core that the caller's gap
 *     may need (a NumPy matmul's OpenBLAS threads). Figures: docs/tuning.md.
 * Only the caller knows which gap it has, so the choice is the caller's: an
 * idle worker polls for spin_ns (fastdecode.set_worker_spin(), which
 * generate() raises for its decode steps, where no other threads run), then
 * sleeps. The default, 0, sleeps at once.
 *
 * Weight order: a decode step reads its weights in the same order every
 * token. When the caller has told the pool that order (fd_set_weight_order:
 * generate() does), a worker that has finished its share of one
 * projection spends the gap before the next reading the start of that next
 * weight, so the next call finds it in cache instead of waiting on memory.
 *
 * One job runs at a time: the caller posts it, runs share 0 itself, and
 * waits for every worker to finish its share. A second caller that finds the
 * pool busy (another Python thread: kernels release the GIL) runs its job
 * alone, so concurrent calls never wait on each other's workers.
 */
#include "fastdecode.h"

#include <stdlib.h>

atomic_int fd_num_threads = 1;

#if FD_HAVE_PTHREADS
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <time.h>

#define FD_POOL_MAX (FD_MAX_THREADS - 1) /* workers */
#define FD_ORDER_MAX 4096                 /* weights in a decode step's order */

static struct {
    pthread_mutex_t busy;  /* held by the caller whose job is posted, and to change the order */
    atomic_ullong epoch;   /* bumped when a job is posted */
    atomic_int unfinished; /* workers yet to finish the posted job */
    atomic_int warming;    /* workers reading ahead in `next` */
    atomic_int stop_warming;
    fd_task fn;            /* the posted job: fn(ctx, t, nt) for t = 1 .. nt - 1 */
    void *ctx;
    int nt;
    const char *next;      /* the weight the caller reads next, or NULL */
    int64_t next_bytes;
    int started;           /* workers 1 .. started are running; read with busy held */
    /* the weights of a decode step in the order it reads them */
    const void *order[FD_ORDER_MAX];
    int64_t order_bytes[FD_ORDER_MAX];
    int order_len, order_at;
} pool = {.busy = PTHREAD_MUTEX_INITIALIZER};

/* One per worker, so a job wakes only the workers it uses: worker w runs
 * the job whose epoch the caller stored in slot[w].epoch. */
typedef struct {
    _Alignas(64) atomic_ullong epoch; /* the last job posted to this worker */
    atomic_int sleeping;              /* in (or entering) pthread_cond_wait */
    unsigned long long start;         /* the epoch when the worker was started */
    pthread_mutex_t lock;             /* with wake: where this worker sleeps */
    pthread_cond_t wake;
} worker_slot;

static worker_slot slot[FD_POOL_MAX + 1]; /* [1 .. FD_POOL_MAX] */
static atomic_llong spin_ns;              /* how long an idle worker polls before sleeping */
static atomic_llong worker_jobs;          /* jobs taken by workers, for fd_pool_worker_jobs */

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* ----------------------------------------------------------------------------
 * Workers
 * ---------------------------------------------------------------------------- */

/* The epoch of the next job posted to slot s after `seen`: polls, then sleeps. */
static unsigned long long wait_for_job(worker_slot *s, unsigned long long seen) {
    long long budget = atomic_load_explicit(&spin_ns, memory_order_relaxed);
    if (budget > 0) {
        long long t0 = now_ns();
        for (unsigned i = 1;; i++) {
            unsigned long long e = atomic_load_explicit(&s->epoch, memory_order_acquire);
            if (e != seen) return e;
            cpu_relax();
            if ((i & 63) == 0 && now_ns() - t0 > budget) break;
        }
    }
    /* sleeping before epoch here, epoch before sleeping in fd_parallel (both
     * sequentially consistent): either the poster sees this worker sleeping
     * and wakes it, or this worker sees the new epoch and does not sleep */
    pthread_mutex_lock(&s->lock);
    atomic_store(&s->sleeping, 1);
    unsigned long long e;
    while ((e = atomic_load(&s->epoch)) == seen) pthread_cond_wait(&s->wake, &s->lock);
    atomic_store(&s->sleeping, 0);
    pthread_mutex_unlock(&s->lock);
    return e;
}

/* Read the next weight: each of its nparts shares (as the next call will cut
 * it) from its start, a byte per cache line, the shares side by side, until
 * a job is posted or the order changes. Worker `me` of `workers` takes
 * shares me - 1, me - 1 + workers, ... */
static void warm(const char *p, int64_t n, int me, int workers, int nparts, unsigned long long seen) {
    const int64_t line = 64, run = 64 * line; /* a run of lines between two checks */
    unsigned sink = 0;
    for (int64_t off = 0; off < n / nparts; off += run) {
        if (atomic_load_explicit(&pool.epoch, memory_order_relaxed) != seen ||
            atomic_load_explicit(&pool.stop_warming, memory_order_relaxed))
            break;
        for (int part = me - 1; part < nparts; part += workers) {
            const char *share = p + n * part / nparts;
            int64_t end = off + run < n / nparts ? off + run : n / nparts;
            for (int64_t o = off; o < end; o += line) sink += *(const volatile unsigned char *)(share + o);
        }
    }
    (void)sink;
}

static void *worker(void *arg) {
    const int me = (int)(intptr_t)arg;
    worker_slot *s = &slot[me];
    unsigned long long seen = s->start; /* its first job may be posted before it runs */
    for (;;) {
        seen = wait_for_job(s, seen);
        atomic_fetch_add_explicit(&worker_jobs, 1, memory_order_relaxed);
        /* the job's fields were written before this slot's epoch, and the
         * next job waits for this one's unfinished count to reach zero */
        const int nt = pool.nt;
        const char *next = pool.next;
        const int64_t next_bytes = pool.next_bytes;
        pool.fn(pool.ctx, me, nt); /* a job is posted only to workers 1 .. nt - 1 */
        if (next) atomic_fetch_add(&pool.warming, 1); /* before the job counts as done */
        atomic_fetch_sub_explicit(&pool.unfinished, 1, memory_order_release);
        if (next) {
            warm(next, next_bytes, me, nt - 1, nt, seen);
            atomic_fetch_sub(&pool.warming, 1);
        }
    }
    return NULL;
}

/* A child of fork() has none of the parent's workers: start again. */
static void after_fork_child(void) {
    pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
    pool.busy = m;
    atomic_store(&pool.unfinished, 0);
    atomic_store(&pool.warming, 0);
    pool.started = 0;
}

static pthread_once_t fork_once = PTHREAD_ONCE_INIT;
static void register_fork(void) { pthread_atfork(NULL, NULL, after_fork_child); }

/* Start workers until there are n; returns how many run (fewer when the
 * system refuses a thread: jobs then run on fewer). Workers take no signals:
 * Python handles those on its main thread. */
static int ensure_workers(int n) {
    if (n > FD_POOL_MAX) n = FD_POOL_MAX;
    if (pool.started >= n) return pool.started;
    pthread_once(&fork_once, register_fork);
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    while (pool.started < n) {
        int me = pool.started + 1;
        worker_slot *w = &slot[me];
        w->start = atomic_load(&pool.epoch);
        atomic_store(&w->epoch, w->start);
        atomic_store(&w->sleeping, 0);
        pthread_mutex_init(&w->lock, NULL);
        pthread_cond_init(&w->wake, NULL);
        pthread_t th;
        if (pthread_create(&th, &attr, worker, (void *)(intptr_t)me) != 0) break;
        pool.started = me;
    }
    pthread_attr_destroy(&attr);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return pool.started;
}

/* ----------------------------------------------------------------------------
 * Jobs
 * ---------------------------------------------------------------------------- */

/* The weight after `w` in the decode order (and its size), or NULL when w is
 * not in it. Called with busy held. */
static const void *next_in_order(const void *w, int64_t *bytes) {
    if (!w || pool.order_len == 0) return NULL;
    int at = pool.order[pool.order_at] == w ? pool.order_at : -1; /* the usual case: in step */
    for (int i = 0; at < 0 && i < pool.order_len; i++)
        if (pool.order[i] == w) at = i;
    if (at < 0) return NULL;
    int next = at + 1 < pool.order_len ? at + 1 : 0; /* the last weight of a step precedes the first */
    pool.order_at = next;
    *bytes = pool.order_bytes[next];
    return pool.order[next];
}

void fd_parallel_reading(fd_task fn, void *ctx, int nt, const void *reading) {
    if (nt > FD_MAX_THREADS) nt = FD_MAX_THREADS;
    if (nt <= 1 || pthread_mutex_trylock(&pool.busy) != 0) {
        fn(ctx, 0, 1);
        return;
    }
    int workers = ensure_workers(nt - 1);
    if (workers < nt - 1) nt = workers + 1;
    if (nt <= 1) {
        pthread_mutex_unlock(&pool.busy);
        fn(ctx, 0, 1);
        return;
    }
    pool.fn = fn, pool.ctx = ctx, pool.nt = nt;
    pool.next_bytes = 0;
    pool.next = next_in_order(reading, &pool.next_bytes);
    atomic_store(&pool.unfinished, nt - 1);
    unsigned long long e = atomic_fetch_add(&pool.epoch, 1) + 1;
    for (int w = 1; w < nt; w++) atomic_store(&slot[w].epoch, e); /* workers nt .. started stay idle */
    for (int w = 1; w < nt; w++)
        if (atomic_load(&slot[w].sleeping)) {
            pthread_mutex_lock(&slot[w].lock);
            pthread_cond_signal(&slot[w].wake);
            pthread_mutex_unlock(&slot[w].lock);
        }
    fn(ctx, 0, nt);
    /* a worker that was asleep takes a while: poll briefly, then let it have the core */
    for (unsigned i = 1; atomic_load_explicit(&pool.unfinished, memory_order_acquire) > 0; i++) {
        if (i < 2048) cpu_relax();
        else sched_yield();
    }
    pthread_mutex_unlock(&pool.busy);
}

void fd_parallel(fd_task fn, void *ctx, int nt) { fd_parallel_reading(fn, ctx, nt, NULL); }

/* Replaces the decode order. On return no worker reads any weight of the old
 * one, so the caller may release those. */
void fd_set_weight_order(const void *const *weights, const int64_t *bytes, int n) {
    pthread_mutex_lock(&pool.busy); /* no job is posted meanwhile */
    atomic_store(&pool.stop_warming, 1);
    while (atomic_load(&pool.warming) > 0) cpu_relax();
    atomic_store(&pool.stop_warming, 0);
    if (n < 0) n = 0;
    if (n > FD_ORDER_MAX) n = FD_ORDER_MAX;
    for (int i = 0; i < n; i++) pool.order[i] = weights[i], pool.order_bytes[i] = bytes[i] > 0 ? bytes[i] : 0;
    pool.order_len = n;
    pool.order_at = 0;
    pthread_mutex_unlock(&pool.busy);
}

/* Sense by generation: a share reads gen before it arrives, the last to
 * arrive resets the count and bumps gen; the others poll, then yield (a
 * share may wait on a worker that has not yet woken). */
void fd_barrier_wait(fd_barrier *b, int nt) {
    if (nt <= 1) return;
    int gen = atomic_load(&b->gen);
    if (atomic_fetch_add(&b->count, 1) == nt - 1) {
        atomic_store(&b->count, 0);
        atomic_fetch_add(&b->gen, 1);
        return;
    }
    for (unsigned i = 1; atomic_load_explicit(&b->gen, memory_order_acquire) == gen; i++) {
        if (i < 2048) cpu_relax();
        else sched_yield();
    }
}

void fd_set_spin_ns(long long ns) { atomic_store(&spin_ns, ns < 0 ? 0 : ns); }
long long fd_get_spin_ns(void) { return atomic_load(&spin_ns); }
int fd_threads_supported(void) { return 1; }
long long fd_pool_worker_jobs(void) { return atomic_load(&worker_jobs); }

#else /* no threads: every job runs on the caller */

void fd_parallel_reading(fd_task fn, void *ctx, int nt, const void *reading) {
    (void)nt, (void)reading;
    fn(ctx, 0, 1);
}
void fd_parallel(fd_task fn, void *ctx, int nt) { fd_parallel_reading(fn, ctx, nt, NULL); }
void fd_set_weight_order(const void *const *weights, const int64_t *bytes, int n) {
    (void)weights, (void)bytes, (void)n;
}
void fd_barrier_wait(fd_barrier *b, int nt) { (void)b, (void)nt; }
void fd_set_spin_ns(long long ns) { (void)ns; }
long long fd_get_spin_ns(void) { return 0; }
int fd_threads_supported(void) { return 0; }
long long fd_pool_worker_jobs(void) { return 0; }

#endif

int fd_set_num_threads(int n) {
    int most = fd_threads_supported() ? FD_MAX_THREADS : 1;
    n = n < 1 ? 1 : n > most ? most : n;
    atomic_store(&fd_num_threads, n);
    return n;
}
