/* loadgen -- the load generator and target server of `make bench` (bench/bench.py).
 *
 * Everything runs on 127.0.0.1.  PROXY below is a port of a SOCKS 5 server, or
 * "direct" for connecting straight to the target (the physical limit).
 *
 *   loadgen target [PROCS]
 *       Listen on 127.0.0.1 (a free port), print "port=N", serve until killed;
 *       with PROCS > 1, PROCS processes accept on that one socket (forked
 *       after it listens), each with its own descriptor limit: the bench's
 *       idle sessions outnumber what one process may open.
 *       A client starts with a 9-byte request: one op byte and a 64-bit
 *       little-endian argument.
 *         'x' ARG   read ARG bytes, send them back, close (the target closes
 *                   first, so TIME_WAIT lands on the target's side and no
 *                   proxy runs out of ephemeral ports)
 *         'e' -     echo everything until EOF (idle sessions: served by one
 *                   epoll thread, not a thread each, so that 20,000 of
 *                   them cost the target neither 20,000 threads, which the
 *                   machine's pid_max would not give, nor their stacks)
 *         'd' ARG   send ARG bytes, close (download)
 *         'u' -     read until EOF, answer the 64-bit count, close (upload:
 *                   only works through a proxy that relays half-close)
 *
 *   loadgen rate PROXY TPORT THREADS SECS [COUNT]
 *       THREADS threads loop: connect, SOCKS 5 CONNECT, 32-byte echo, the
 *       target closes, close with RST.  For SECS seconds, or when COUNT > 0
 *       until COUNT connections have been tried.
 *       -> "rate conn_per_s= p50_us= p99_us= ok= errors= secs="
 *
 *   loadgen bulk PROXY TPORT STREAMS MIB down|up
 *       STREAMS sessions at once, each moving MIB mebibytes.
 *       -> "bulk MB_per_s= streams= mib_each= dir= failed= secs="  (MB = MiB)
 *
 *   loadgen hold PROXY TPORT N
 *       Open N echo sessions one after another (a session that fails is
 *       counted and the next one tried, until 10 fail in a row or 120 s have
 *       gone), check
 *       every one answers ("hold pass=0 ..."), then wait for a line (or EOF)
 *       on stdin, check them all again ("hold pass=1 ..."), close them and
 *       exit.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (256 * 1024) /* bytes per send of a bulk sender, per recv of the downloader */
#define SINK (64 * 1024)    /* bytes per recv of the target */

static struct sockaddr_in proxy_sa, target_sa;
static int via_proxy;
static int io_timeout = 10; /* seconds, per read or write */

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void loopback(struct sockaddr_in *sa, int port)
{
    memset(sa, 0, sizeof *sa);
    sa->sin_family = AF_INET;
    sa->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sa->sin_port = htons((uint16_t)port);
}

/* Read exactly len bytes: 0, or -1 on EOF, error or timeout. */
static int get(int fd, void *buf, size_t len)
{
    char *p = buf;
    while (len > 0) {
        ssize_t n = recv(fd, p, len, 0);
        if (n > 0) {
            p += n;
            len -= (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else {
            return -1;
        }
    }
    return 0;
}

/* Write all len bytes: 0, or -1. */
static int put(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n > 0) {
            p += n;
            len -= (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else {
            return -1;
        }
    }
    return 0;
}

static void set_timeouts(int fd, int secs)
{
    struct timeval tv = {.tv_sec = secs, .tv_usec = 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

/* A connected socket to the target, through the SOCKS 5 proxy unless direct;
 * -1 when anything fails. */
static int dial(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int on = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
    set_timeouts(fd, io_timeout);
    const struct sockaddr_in *to = via_proxy ? &proxy_sa : &target_sa;
    if (connect(fd, (const struct sockaddr *)to, sizeof *to) != 0)
        goto fail;
    if (!via_proxy)
        return fd;

    /* greeting: version 5, one method, "no authentication" */
    unsigned char msg[64] = {5, 1, 0};
    if (put(fd, msg, 3) || get(fd, msg, 2) || msg[0] != 5 || msg[1] != 0)
        goto fail;
    /* CONNECT to an IPv4 address */
    unsigned char req[10] = {5, 1, 0, 1};
    memcpy(req + 4, &target_sa.sin_addr, 4);
    memcpy(req + 8, &target_sa.sin_port, 2);
    if (put(fd, req, sizeof req) || get(fd, msg, 4) || msg[0] != 5 || msg[1] != 0)
        goto fail;
    size_t left;
    switch (msg[3]) {
    case 1: left = 4 + 2; break;
    case 4: left = 16 + 2; break;
    case 3:
        if (get(fd, msg, 1))
            goto fail;
        left = (size_t)msg[0] + 2;
        break;
    default: goto fail;
    }
    if (get(fd, msg, left))
        goto fail;
    return fd;
fail:
    close(fd);
    return -1;
}

static void request(unsigned char out[9], char op, uint64_t arg)
{
    out[0] = (unsigned char)op;
    for (int i = 0; i < 8; i++)
        out[1 + i] = (unsigned char)(arg >> (8 * i));
}

static uint64_t le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* ------------------------------------------------------------ target */

/* Never written: every page of it is the kernel's shared zero page, so the
 * sender's reads cost next to nothing and the proxy is what is measured. */
static char zeros[CHUNK];
static int echo_ep = -1; /* the idle sessions' epoll set (echo_loop) */

/* One thread per connection, each with its own 64 KiB receive buffer on its
 * stack.  That buffer is part of what a connection costs the target: a new
 * thread's stack pages are fresh, and gcc's stack-clash probes touch every
 * page of the frame, so each connection pays some 16 page faults here.  The
 * reference harness (../shared/tools/socksload.c) pays the same, and the
 * direct row's conn/s agrees with it only when this target does too; with
 * a small buffer, direct loopback measured ~40 % more connections per second. */
static void *target_client(void *arg)
{
    int fd = (int)(intptr_t)arg;
    char buf[SINK];
    unsigned char hdr[9];
    if (get(fd, hdr, sizeof hdr) == 0) {
        uint64_t n = le64(hdr + 1);
        ssize_t r;
        if (hdr[0] == 'x' && n <= sizeof buf) {
            if (get(fd, buf, (size_t)n) == 0)
                put(fd, buf, (size_t)n);
        } else if (hdr[0] == 'e') {
            struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
            if (epoll_ctl(echo_ep, EPOLL_CTL_ADD, fd, &ev) == 0)
                return NULL; /* the echo thread owns fd now */
        } else if (hdr[0] == 'd') {
            while (n > 0) {
                size_t k = n < CHUNK ? (size_t)n : CHUNK;
                if (put(fd, zeros, k))
                    break;
                n -= k;
            }
        } else if (hdr[0] == 'u') {
            uint64_t total = 0;
            while ((r = recv(fd, buf, sizeof buf, 0)) > 0 || (r < 0 && errno == EINTR))
                if (r > 0)
                    total += (uint64_t)r;
            unsigned char ans[9];
            request(ans, 0, total);
            put(fd, ans + 1, 8);
        }
    }
    close(fd);
    return NULL;
}

/* The idle sessions' echo: one thread over an epoll set.  Their bytes are
 * the bench's one-byte checks, so a non-blocking send takes them whole; a
 * session that fails or ends is closed (which takes it off the set). */

static void *echo_loop(void *arg)
{
    (void)arg;
    struct epoll_event evs[256];
    char buf[4096];
    for (;;) {
        int n = epoll_wait(echo_ep, evs, 256, -1);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            ssize_t r = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
            if (r < 0 && (errno == EAGAIN || errno == EINTR))
                continue;
            if (r <= 0 || send(fd, buf, (size_t)r, MSG_DONTWAIT | MSG_NOSIGNAL) != r)
                close(fd);
        }
    }
    return NULL;
}

static int run_target(int procs)
{
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), on = 1;
    struct sockaddr_in sa;
    socklen_t sl = sizeof sa;
    loopback(&sa, 0);
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    if (ls < 0 || bind(ls, (struct sockaddr *)&sa, sizeof sa) || listen(ls, 4096) ||
        getsockname(ls, (struct sockaddr *)&sa, &sl)) {
        perror("loadgen target");
        return 1;
    }
    printf("port=%d\n", ntohs(sa.sin_port));
    fflush(stdout);
    /* the others: before any thread starts (threads do not survive fork) */
    for (int i = 1; i < procs; i++) {
        pid_t pid = fork();
        if (pid == 0)
            break;
        if (pid < 0) {
            perror("loadgen target: fork");
            break;
        }
    }

    pthread_attr_t attr;
    pthread_t echo;
    echo_ep = epoll_create1(EPOLL_CLOEXEC);
    if (echo_ep < 0 || pthread_create(&echo, NULL, echo_loop, NULL) != 0) {
        perror("loadgen target: echo thread");
        return 1;
    }
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    for (;;) {
        int fd = accept4(ls, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE)
                usleep(1000);
            continue;
        }
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
        set_timeouts(fd, 60);
        pthread_t t;
        if (pthread_create(&t, &attr, target_client, (void *)(intptr_t)fd) != 0)
            close(fd);
    }
}

/* ------------------------------------------------------------ rate */

struct rate_thread {
    pthread_t tid;
    double *lat;
    size_t n, cap;
    long errors;
};

static double rate_deadline;
static long rate_count;      /* 0: run until the deadline */
static long rate_issued;     /* connections started so far (count mode) */

static int rate_more(void)
{
    if (rate_count > 0)
        return __atomic_fetch_add(&rate_issued, 1, __ATOMIC_RELAXED) < rate_count;
    return mono() < rate_deadline;
}

static void *rate_loop(void *arg)
{
    struct rate_thread *me = arg;
    unsigned char msg[9 + 32], back[32];
    request(msg, 'x', 32);
    for (int i = 0; i < 32; i++)
        msg[9 + i] = (unsigned char)('a' + i % 26);
    struct linger rst = {.l_onoff = 1, .l_linger = 0};
    while (rate_more()) {
        double t0 = mono();
        int fd = dial();
        int ok = fd >= 0 && put(fd, msg, sizeof msg) == 0 && get(fd, back, sizeof back) == 0 &&
                 memcmp(back, msg + 9, sizeof back) == 0;
        if (fd >= 0) {
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &rst, sizeof rst);
            close(fd);
        }
        double dt = mono() - t0;
        if (!ok) {
            me->errors++;
            usleep(1000);
            continue;
        }
        if (me->n == me->cap) {
            size_t cap = me->cap ? me->cap * 2 : 65536;
            double *p = realloc(me->lat, cap * sizeof *p);
            if (!p)
                continue;
            me->lat = p;
            me->cap = cap;
        }
        me->lat[me->n++] = dt;
    }
    return NULL;
}

static int by_value(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int run_rate(int threads, double secs, long count)
{
    if (threads < 1)
        threads = 1;
    struct rate_thread *t = calloc((size_t)threads, sizeof *t);
    rate_count = count;
    double start = mono();
    rate_deadline = start + secs;
    for (int i = 0; i < threads; i++)
        pthread_create(&t[i].tid, NULL, rate_loop, &t[i]);
    size_t total = 0;
    long errors = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(t[i].tid, NULL);
        total += t[i].n;
        errors += t[i].errors;
    }
    double elapsed = mono() - start;
    double *all = malloc((total ? total : 1) * sizeof *all);
    size_t k = 0;
    for (int i = 0; i < threads; i++) {
        memcpy(all + k, t[i].lat, t[i].n * sizeof *all);
        k += t[i].n;
        free(t[i].lat);
    }
    qsort(all, total, sizeof *all, by_value);
    double p50 = total ? all[total / 2] : 0, p99 = total ? all[total * 99 / 100] : 0;
    printf("rate conn_per_s=%.0f p50_us=%.0f p99_us=%.0f ok=%zu errors=%ld secs=%.2f\n",
           (double)total / elapsed, p50 * 1e6, p99 * 1e6, total, errors, elapsed);
    free(all);
    free(t);
    return 0;
}

/* ------------------------------------------------------------ bulk */

static uint64_t bulk_bytes;
static int bulk_up;
static long bulk_failed;

static void *bulk_one(void *arg)
{
    (void)arg;
    char *buf = malloc(CHUNK);
    int fd = buf ? dial() : -1;
    int ok = 0;
    if (fd >= 0) {
        unsigned char hdr[9];
        if (!bulk_up) {
            request(hdr, 'd', bulk_bytes);
            uint64_t got = 0;
            ssize_t r;
            if (put(fd, hdr, sizeof hdr) == 0)
                while (got < bulk_bytes && ((r = recv(fd, buf, CHUNK, 0)) > 0 || (r < 0 && errno == EINTR)))
                    if (r > 0)
                        got += (uint64_t)r;
            ok = got == bulk_bytes;
        } else {
            request(hdr, 'u', 0);
            memset(buf, 'u', CHUNK);
            uint64_t sent = 0;
            int err = put(fd, hdr, sizeof hdr);
            while (!err && sent < bulk_bytes) {
                size_t k = bulk_bytes - sent < CHUNK ? (size_t)(bulk_bytes - sent) : CHUNK;
                err = put(fd, buf, k);
                sent += k;
            }
            unsigned char ans[8];
            /* half-close: the target answers only once it has seen EOF */
            ok = !err && shutdown(fd, SHUT_WR) == 0 && get(fd, ans, 8) == 0 && le64(ans) == bulk_bytes;
        }
        close(fd);
    }
    if (!ok)
        __atomic_fetch_add(&bulk_failed, 1, __ATOMIC_RELAXED);
    free(buf);
    return NULL;
}

static int run_bulk(int streams, double mib, int up)
{
    if (streams < 1)
        streams = 1;
    bulk_bytes = (uint64_t)(mib * 1048576.0);
    bulk_up = up;
    io_timeout = 30;
    pthread_t *t = calloc((size_t)streams, sizeof *t);
    double start = mono();
    for (int i = 0; i < streams; i++)
        pthread_create(&t[i], NULL, bulk_one, NULL);
    for (int i = 0; i < streams; i++)
        pthread_join(t[i], NULL);
    double elapsed = mono() - start;
    printf("bulk MB_per_s=%.1f streams=%d mib_each=%g dir=%s failed=%ld secs=%.2f\n",
           streams * mib / elapsed, streams, mib, up ? "up" : "down", bulk_failed, elapsed);
    free(t);
    return 0;
}

/* ------------------------------------------------------------ hold */

static int check_all(const int *fds, int n)
{
    int alive = 0;
    for (int i = 0; i < n; i++) {
        char c = (char)('A' + i % 26), d = 0;
        if (put(fds[i], &c, 1) == 0 && get(fds[i], &d, 1) == 0 && d == c)
            alive++;
    }
    return alive;
}

static int run_hold(int n)
{
    int *fds = calloc((size_t)(n > 0 ? n : 1), sizeof *fds), opened = 0, alive = 0, failed = 0, in_row = 0;
    unsigned char hdr[9];
    request(hdr, 'e', 0);
    double t0 = mono();
    /* a proxy may refuse one session and take the next (another worker,
     * descriptors freed): go on, but not for ever */
    while (opened < n && in_row < 10 && mono() - t0 < 120) {
        int fd = dial();
        if (fd >= 0 && put(fd, hdr, sizeof hdr) == 0) {
            fds[opened++] = fd;
            in_row = 0;
            continue;
        }
        if (fd >= 0)
            close(fd);
        failed++;
        in_row++;
    }
    double open_secs = mono() - t0;
    for (int pass = 0; pass < 2; pass++) {
        alive = check_all(fds, opened);
        printf("hold pass=%d wanted=%d opened=%d alive=%d failed=%d open_secs=%.2f\n", pass, n, opened, alive,
               failed, open_secs);
        fflush(stdout);
        if (pass == 0) {
            char line[64];
            if (!fgets(line, sizeof line, stdin))
                clearerr(stdin);
        }
    }
    for (int i = 0; i < opened; i++)
        close(fds[i]);
    free(fds);
    return alive == n ? 0 : 1;
}

/* ------------------------------------------------------------ main */

static int usage(void)
{
    fputs("usage: loadgen target [PROCS]\n"
          "       loadgen rate PROXY|direct TPORT THREADS SECS [COUNT]\n"
          "       loadgen bulk PROXY|direct TPORT STREAMS MIB down|up\n"
          "       loadgen hold PROXY|direct TPORT N\n",
          stderr);
    return 2;
}

int main(int argc, char **argv)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (argc >= 2 && strcmp(argv[1], "target") == 0)
        return run_target(argc >= 3 ? atoi(argv[2]) : 1);
    if (argc < 5)
        return usage();
    via_proxy = strcmp(argv[2], "direct") != 0;
    if (via_proxy)
        loopback(&proxy_sa, atoi(argv[2]));
    loopback(&target_sa, atoi(argv[3]));
    if (strcmp(argv[1], "rate") == 0 && argc >= 6)
        return run_rate(atoi(argv[4]), atof(argv[5]), argc >= 7 ? atol(argv[6]) : 0);
    if (strcmp(argv[1], "bulk") == 0 && argc >= 7)
        return run_bulk(atoi(argv[4]), atof(argv[5]), strcmp(argv[6], "up") == 0);
    if (strcmp(argv[1], "hold") == 0)
        return run_hold(atoi(argv[4]));
    return usage();
}
