/* pool.c: the worker threads that every parallel kernel runs on.
 *
 * A decode step calls a parallel kernel every few tens of microseconds (a
 * GPT-2 token: ~50 projections and attentions), and between two calls the
 * caller runs Python and NumPy code. What an idle worker does in that gap
 * decides what the next call costs:
 *   - sleeping (futex), it needs 20-100 us to wake, which is a third of a
 *     small projection's time;
 *   - polling, it answers at once, but holds a core: when the caller's
 *     gap is a NumPy matmul, OpenBLAS's threads need that core (a 0.08 ms
 *     matmul + kernel step took 8 ms under libgomp's default polling).
 * Only the caller knows which gap it has, so the choice is the caller's:
 * an idle worker polls for fd_spin_ns (fastdecode.worker_spin(), which
 * generate() turns up for its decode loop, where no other threads run), then
 * sleeps. The default, 0, sleeps at once.
 *
 * One job runs at a time: the caller posts it, runs share 0 itself, and
 * waits for every worker to finish its share. A second caller that finds the
 * pool busy (another Python thread: kernels release the GIL) runs its job
 * alone, so concurrent calls never wait on each other's workers.
 */
#include "fastdecode.h"

#include <stdlib.h>

int fd_num_threads = 1;

#if FD_HAVE_PTHREADS
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <time.h>

#define FD_POOL_MAX 256 /* workers; more threads than this run as this many */

static struct {
    pthread_mutex_t busy;  /* held by the caller whose job is posted */
    pthread_mutex_t lock;  /* with wake: where idle workers sleep */
    pthread_cond_t wake;
    atomic_ullong epoch;   /* bumped when a job is posted */
    atomic_int unfinished; /* workers yet to finish the posted job */
    atomic_int sleepers;   /* workers in (or entering) pthread_cond_wait */
    fd_task fn;            /* the posted job: fn(ctx, t, nt) for t = 1 .. nt - 1 */
    void *ctx;
    int nt;
    int started; /* workers 1 .. started are running */
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER};

static atomic_llong spin_ns; /* how long an idle worker polls before sleeping */
static unsigned long long start_epoch[FD_POOL_MAX + 1];

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

/* The epoch of the next job after `seen`: polls, then sleeps. */
static unsigned long long wait_for_job(unsigned long long seen) {
    long long budget = atomic_load_explicit(&spin_ns, memory_order_relaxed);
    if (budget > 0) {
        long long t0 = now_ns();
        for (unsigned i = 1;; i++) {
            unsigned long long e = atomic_load_explicit(&pool.epoch, memory_order_acquire);
            if (e != seen) return e;
            cpu_relax();
            if ((i & 63) == 0 && now_ns() - t0 > budget) break;
        }
    }
    /* sleepers before epoch here, epoch before sleepers in fd_parallel (both
     * sequentially consistent): either the poster sees a sleeper and wakes
     * it, or this thread sees the new epoch and does not sleep */
    pthread_mutex_lock(&pool.lock);
    atomic_fetch_add(&pool.sleepers, 1);
    unsigned long long e;
    while ((e = atomic_load(&pool.epoch)) == seen) pthread_cond_wait(&pool.wake, &pool.lock);
    atomic_fetch_sub(&pool.sleepers, 1);
    pthread_mutex_unlock(&pool.lock);
    return e;
}

static void *worker(void *arg) {
    const int me = (int)(intptr_t)arg;
    unsigned long long seen = start_epoch[me];
    for (;;) {
        seen = wait_for_job(seen);
        /* the job's fields were written before the epoch was bumped, and the
         * next job waits for this one's unfinished count to reach zero */
        if (me < pool.nt) pool.fn(pool.ctx, me, pool.nt);
        atomic_fetch_sub_explicit(&pool.unfinished, 1, memory_order_release);
    }
    return NULL;
}

/* A child of fork() has none of the parent's workers: start again. */
static void after_fork_child(void) {
    pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t c = PTHREAD_COND_INITIALIZER;
    pool.busy = m;
    pool.lock = m;
    pool.wake = c;
    atomic_store(&pool.unfinished, 0);
    atomic_store(&pool.sleepers, 0);
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
        start_epoch[me] = atomic_load(&pool.epoch);
        pthread_t th;
        if (pthread_create(&th, &attr, worker, (void *)(intptr_t)me) != 0) break;
        pool.started = me;
    }
    pthread_attr_destroy(&attr);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return pool.started;
}

void fd_parallel(fd_task fn, void *ctx, int nt) {
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
    atomic_store(&pool.unfinished, workers);
    atomic_fetch_add(&pool.epoch, 1);
    if (atomic_load(&pool.sleepers) > 0) {
        pthread_mutex_lock(&pool.lock);
        pthread_cond_broadcast(&pool.wake);
        pthread_mutex_unlock(&pool.lock);
    }
    fn(ctx, 0, nt);
    /* a worker that was asleep takes a while: poll briefly, then let it have the core */
    for (unsigned i = 1; atomic_load_explicit(&pool.unfinished, memory_order_acquire) > 0; i++) {
        if (i < 2048) cpu_relax();
        else sched_yield();
    }
    pthread_mutex_unlock(&pool.busy);
}

void fd_set_spin_ns(long long ns) { atomic_store(&spin_ns, ns < 0 ? 0 : ns); }
long long fd_get_spin_ns(void) { return atomic_load(&spin_ns); }
int fd_threads_supported(void) { return 1; }

#else /* no threads: every job runs on the caller */

void fd_parallel(fd_task fn, void *ctx, int nt) {
    (void)nt;
    fn(ctx, 0, 1);
}
void fd_set_spin_ns(long long ns) { (void)ns; }
long long fd_get_spin_ns(void) { return 0; }
int fd_threads_supported(void) { return 0; }

#endif

int fd_set_num_threads(int n) {
    fd_num_threads = n < 1 ? 1 : n;
    return fd_num_threads;
}
