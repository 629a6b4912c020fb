/*
 * synflood: bare TCP SYNs from a raw socket, each from its own source port, paced.
 *
 *   synflood SOURCE DESTINATION DPORT COUNT [RATE [PORTS [FIRST]]]
 *
 * Sends COUNT SYNs from SOURCE (an address of the current network namespace: run it
 * inside the pod's with `ip netns exec`) to DESTINATION:DPORT, IPv4 or IPv6 (from the
 * addresses). Source ports cycle 20000 .. 20000+PORTS-1 (PORTS at most 45000, default
 * 20000), starting at index FIRST (default 0), so each SYN is a new connection to the
 * kernel. RATE is SYNs a second (0 or absent: as fast as possible); sends are batched
 * with sendmmsg(2), 64 at a time, each batch sent when its last SYN is due, so the rate
 * holds over any span longer than a batch.
 *
 * The kernel writes the IP header (IPv4) and the TCP checksum is ours (the pseudo-
 * header's), computed once per source port before the first send. A send the kernel
 * refuses (ENOBUFS, EAGAIN) is counted as failed and not retried.
 *
 * On exit one JSON line on stdout: {"sent":N,"failed":N,"seconds":S,"cpu_user":S,
 * "cpu_system":S,"next":I} where next is the port index to start the next run at.
 * Exit status 0, or 2 for bad arguments, 1 for a socket error.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
#define FIRST_PORT 20000
#define MAX_PORTS 45000
#define TCP_HEADER 20

struct segment {
    uint8_t bytes[TCP_HEADER];
};

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_until(double when)
{
    struct timespec ts;
    ts.tv_sec = (time_t)when;
    ts.tv_nsec = (long)((when - (double)ts.tv_sec) * 1e9);
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
    }
}

static uint32_t sum16(const uint8_t *data, size_t len, uint32_t total)
{
    for (size_t i = 0; i + 1 < len; i += 2)
        total += (uint32_t)data[i] << 8 | data[i + 1];
    if (len % 2)
        total += (uint32_t)data[len - 1] << 8;
    return total;
}

static uint16_t fold(uint32_t total)
{
    while (total >> 16)
        total = (total & 0xffff) + (total >> 16);
    return (uint16_t)~total;
}

static int parse(const char *text, long min, long max, long *out)
{
    char *end;
    errno = 0;
    long value = strtol(text, &end, 10);
    if (errno || *end || end == text || value < min || value > max)
        return -1;
    *out = value;
    return 0;
}

static int usage(const char *why)
{
    fprintf(stderr, "synflood: %s\nusage: synflood SOURCE DESTINATION DPORT COUNT "
                    "[RATE [PORTS [FIRST]]]\n", why);
    return 2;
}

int main(int argc, char **argv)
{
    if (argc < 5 || argc > 8)
        return usage("wrong number of arguments");
    long dport, count, rate = 0, ports = 20000, first = 0;
    if (parse(argv[3], 1, 65535, &dport) || parse(argv[4], 0, 1L << 40, &count))
        return usage("bad DPORT or COUNT");
    if (argc > 5 && parse(argv[5], 0, 100000000, &rate))
        return usage("bad RATE");
    if (argc > 6 && parse(argv[6], 1, MAX_PORTS, &ports))
        return usage("bad PORTS (1 to 45000)");
    if (argc > 7 && parse(argv[7], 0, ports - 1, &first))
        return usage("bad FIRST (0 to PORTS-1)");

    struct sockaddr_storage src = {0}, dst = {0};
    socklen_t addrlen;
    uint8_t pseudo[40];
    size_t pseudo_len;
    int family;
    struct sockaddr_in *s4 = (struct sockaddr_in *)&src, *d4 = (struct sockaddr_in *)&dst;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&src, *d6 = (struct sockaddr_in6 *)&dst;
    if (inet_pton(AF_INET, argv[1], &s4->sin_addr) == 1 &&
        inet_pton(AF_INET, argv[2], &d4->sin_addr) == 1) {
        family = AF_INET;
        s4->sin_family = d4->sin_family = AF_INET;
        addrlen = sizeof(struct sockaddr_in);
        memcpy(pseudo, &s4->sin_addr, 4);
        memcpy(pseudo + 4, &d4->sin_addr, 4);
        pseudo[8] = 0;
        pseudo[9] = IPPROTO_TCP;
        pseudo[10] = 0;
        pseudo[11] = TCP_HEADER;
        pseudo_len = 12;
    } else if (inet_pton(AF_INET6, argv[1], &s6->sin6_addr) == 1 &&
               inet_pton(AF_INET6, argv[2], &d6->sin6_addr) == 1) {
        family = AF_INET6;
        s6->sin6_family = d6->sin6_family = AF_INET6;
        addrlen = sizeof(struct sockaddr_in6);
        memcpy(pseudo, &s6->sin6_addr, 16);
        memcpy(pseudo + 16, &d6->sin6_addr, 16);
        memset(pseudo + 32, 0, 8);
        pseudo[35] = TCP_HEADER;
        pseudo[39] = IPPROTO_TCP;
        pseudo_len = 40;
    } else {
        return usage("SOURCE and DESTINATION must be addresses of one family");
    }

    int fd = socket(family, SOCK_RAW, IPPROTO_TCP);
    if (fd < 0) {
        perror("synflood: socket");
        return 1;
    }
    if (bind(fd, (struct sockaddr *)&src, addrlen) < 0) {
        perror("synflood: bind");
        return 1;
    }
    int sndbuf = 4 << 20;
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
    /* Never read: its receive queue would only fill with the node's replies. */
    shutdown(fd, SHUT_RD);

    struct segment *segments = calloc((size_t)ports, sizeof(*segments));
    if (!segments) {
        perror("synflood: calloc");
        return 1;
    }
    uint32_t base = sum16(pseudo, pseudo_len, 0);
    for (long i = 0; i < ports; i++) {
        uint8_t *h = segments[i].bytes;
        uint16_t sport = (uint16_t)(FIRST_PORT + i);
        h[0] = sport >> 8, h[1] = sport & 0xff;
        h[2] = (uint8_t)(dport >> 8), h[3] = dport & 0xff;
        h[4] = 0, h[5] = 0, h[6] = 0x03, h[7] = 0xe8; /* sequence number 1000 */
        h[12] = 5 << 4;                               /* header length: 5 words */
        h[13] = 0x02;                                 /* SYN */
        h[14] = 64240 >> 8, h[15] = 64240 & 0xff;     /* window */
        uint16_t check = fold(sum16(h, TCP_HEADER, base));
        h[16] = check >> 8, h[17] = check & 0xff;
    }

    struct mmsghdr msgs[BATCH];
    struct iovec iovs[BATCH];
    memset(msgs, 0, sizeof(msgs));
    for (int i = 0; i < BATCH; i++) {
        iovs[i].iov_len = TCP_HEADER;
        msgs[i].msg_hdr.msg_name = &dst;
        msgs[i].msg_hdr.msg_namelen = addrlen;
        msgs[i].msg_hdr.msg_iov = &iovs[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }

    long next = first, done = 0, sent = 0, failed = 0;
    double started = now();
    while (done < count) {
        int n = count - done < BATCH ? (int)(count - done) : BATCH;
        if (rate > 0) {
            double due = started + (double)(done + n - 1) / (double)rate;
            if (due > now())
                sleep_until(due);
        }
        for (int i = 0; i < n; i++) {
            iovs[i].iov_base = segments[(next + i) % ports].bytes;
        }
        int off = 0;
        while (off < n) {
            int r = sendmmsg(fd, msgs + off, (unsigned)(n - off), 0);
            if (r > 0) {
                sent += r;
                off += r;
            } else if (r < 0 && errno == EINTR) {
                continue;
            } else if (r < 0 && (errno == ENOBUFS || errno == EAGAIN || errno == ENOMEM)) {
                failed++; /* the one at off: skip it */
                off++;
            } else {
                perror("synflood: sendmmsg");
                return 1;
            }
        }
        next = (next + n) % ports;
        done += n;
    }
    double seconds = now() - started;
    struct rusage usage_;
    getrusage(RUSAGE_SELF, &usage_);
    printf("{\"sent\":%ld,\"failed\":%ld,\"seconds\":%.4f,\"cpu_user\":%.3f,"
           "\"cpu_system\":%.3f,\"next\":%ld}\n",
           sent, failed, seconds,
           (double)usage_.ru_utime.tv_sec + (double)usage_.ru_utime.tv_usec / 1e6,
           (double)usage_.ru_stime.tv_sec + (double)usage_.ru_stime.tv_usec / 1e6, next);
    return 0;
}
