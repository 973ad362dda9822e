/* Exact heap accounting for benchmarks/bench_memory.py, loaded with LD_PRELOAD.

   Wraps malloc, calloc, realloc, free, posix_memalign, aligned_alloc and memalign: every block's
   usable size (malloc_usable_size) is added when it is handed out and taken away when it is freed,
   so eoq_heap_current() is the bytes in use now and eoq_heap_peak() their maximum since the last
   eoq_heap_reset_peak(): what a step allocates, whatever the heap keeps or the OS reclaims.
   calloc calls made while dlsym itself resolves the real functions are served from a static
   buffer (never freed to libc). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <malloc.h>
#include <stdatomic.h>
#include <stddef.h>
#include <string.h>

static void *(*real_malloc)(size_t);
static void (*real_free)(void *);
static void *(*real_calloc)(size_t, size_t);
static void *(*real_realloc)(void *, size_t);
static int (*real_posix_memalign)(void **, size_t, size_t);
static void *(*real_aligned_alloc)(size_t, size_t);
static void *(*real_memalign)(size_t, size_t);
static atomic_long current, peak;
static char boot[1 << 16];
static size_t boot_used;

static void init(void) {
  real_malloc = dlsym(RTLD_NEXT, "malloc");
  real_free = dlsym(RTLD_NEXT, "free");
  real_calloc = dlsym(RTLD_NEXT, "calloc");
  real_realloc = dlsym(RTLD_NEXT, "realloc");
  real_posix_memalign = dlsym(RTLD_NEXT, "posix_memalign");
  real_aligned_alloc = dlsym(RTLD_NEXT, "aligned_alloc");
  real_memalign = dlsym(RTLD_NEXT, "memalign");
}

static void count_in(void *p) {
  if (!p) return;
  long n = (long)malloc_usable_size(p);
  long now = atomic_fetch_add(&current, n) + n;
  long seen = atomic_load(&peak);
  while (now > seen && !atomic_compare_exchange_weak(&peak, &seen, now)) {
  }
}

static void count_out(void *p) {
  if (p) atomic_fetch_sub(&current, (long)malloc_usable_size(p));
}

static int from_boot(void *p) { return (char *)p >= boot && (char *)p < boot + sizeof boot; }

void *malloc(size_t n) {
  if (!real_malloc) init();
  void *p = real_malloc(n);
  count_in(p);
  return p;
}

void *calloc(size_t a, size_t b) {
  if (!real_calloc) {                 /* dlsym asking for memory before the real calloc is known */
    void *p = boot + boot_used;
    boot_used += (a * b + 15) & ~(size_t)15;
    return boot_used <= sizeof boot ? p : NULL;
  }
  void *p = real_calloc(a, b);
  count_in(p);
  return p;
}

void free(void *p) {
  if (!p || from_boot(p)) return;
  if (!real_free) init();
  count_out(p);
  real_free(p);
}

void *realloc(void *p, size_t n) {
  if (!real_realloc) init();
  if (from_boot(p)) {
    void *q = malloc(n);
    if (q) memcpy(q, p, n);
    return q;
  }
  long before = p ? (long)malloc_usable_size(p) : 0;
  void *q = real_realloc(p, n);
  if (q || n == 0) {
    atomic_fetch_sub(&current, before);
    count_in(q);
  }
  return q;
}

int posix_memalign(void **out, size_t align, size_t n) {
  if (!real_posix_memalign) init();
  int r = real_posix_memalign(out, align, n);
  if (r == 0) count_in(*out);
  return r;
}

void *aligned_alloc(size_t align, size_t n) {
  if (!real_aligned_alloc) init();
  void *p = real_aligned_alloc(align, n);
  count_in(p);
  return p;
}

void *memalign(size_t align, size_t n) {
  if (!real_memalign) init();
  void *p = real_memalign(align, n);
  count_in(p);
  return p;
}

long eoq_heap_current(void) { return atomic_load(&current); }
long eoq_heap_peak(void) { return atomic_load(&peak); }
void eoq_heap_reset_peak(void) { atomic_store(&peak, atomic_load(&current)); }
