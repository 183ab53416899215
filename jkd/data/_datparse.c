/* jkd.data._datparse: whitespace-separated decimal text -> float64 rows, bit-identical to np.loadtxt.
 *
 * parse(text, columns, out, start_row, final[, portable]) -> (end_row, used): parses the rows of
 * `text` into `out` from row `start_row` on; unless `final`, only up to the last newline (`used`
 * bytes; a file goes through in pieces). end_row is -1 when the text is anything but plain rows of
 * `columns` numbers (wrong column count, a token that is no decimal or NaN, a '#', more rows than
 * `out` holds). -1 is no error: jkd.data.pamap2_parse then hands the file to its numpy parser,
 * which reads what is readable and names the file and line of what is not.
 *
 * text: any bytes-like object. out: a writable C-contiguous float64 buffer of k * columns values.
 * The GIL is released while parsing, so files parse in parallel on threads.
 *
 * A token [+-]digits[.digits][(e|E)[+-]digits] with at most 19 significant digits m and a decimal
 * exponent e in [-22, 22] is m * 10^e or m / 10^-e in one IEEE operation on two exact doubles
 * (m <= 2^53): correctly rounded, as strtod (Clinger's fast path). Other decimals go to strtod
 * itself (glibc's is correctly rounded); NaN (any case) is NaN.
 *
 * The common token (at most 15 characters of digits and one dot) has two readers with the same
 * results: portable C, and, on x86-64 CPUs with AVX-512 VBMI2 (checked at run time; module constant
 * SIMD), one that compares the token's 16 bytes at once and combines its digits by multiply-adds
 * (2.2-2.6x the portable reader on one core here). `portable=True` forces the portable one (tests).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static const double kPow10[23] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                  1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                  1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

static int is_blank(char c) {
  return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
}

static int is_digit(char c) { return (unsigned char)(c - '0') < 10; }

static int ends_token(const char *s, const char *end) {
  return s == end || *s == '\n' || is_blank(*s);
}

/* Reads the token starting at p (it ends at a blank, a newline or `end`) into *out; returns the
 * position after it, or NULL for anything but a decimal or NaN. */
static const char *parse_token(const char *p, const char *end, double *out) {
  const char *s = p;
  int negative = 0;
  if (*s == '-' || *s == '+') negative = *s++ == '-';
  uint64_t m = 0;
  int significant = 0, digits = 0, fraction = 0, truncated = 0;
  for (; s < end && is_digit(*s); s++, digits++) {
    if (m == 0 && *s == '0') continue;
    if (significant < 19) m = m * 10 + (uint64_t)(*s - '0'), significant++;
    else truncated = 1;
  }
  if (s < end && *s == '.') {
    for (s++; s < end && is_digit(*s); s++, digits++) {
      if (m == 0 && *s == '0') { fraction++; continue; }
      if (significant < 19) m = m * 10 + (uint64_t)(*s - '0'), significant++, fraction++;
      else truncated = 1;
    }
  }
  if (digits == 0) {                      /* NaN, in any case and without a sign */
    if (s == p && end - s >= 3 && (s[0] | 0x20) == 'n' && (s[1] | 0x20) == 'a' &&
        (s[2] | 0x20) == 'n' && ends_token(s + 3, end)) {
      *out = NAN;
      return s + 3;
    }
    return NULL;
  }
  long exponent = 0;
  if (s < end && (*s == 'e' || *s == 'E')) {
    s++;
    int exp_negative = 0;
    if (s < end && (*s == '-' || *s == '+')) exp_negative = *s++ == '-';
    if (s == end || !is_digit(*s)) return NULL;
    for (; s < end && is_digit(*s); s++)
      if (exponent < 100000) exponent = exponent * 10 + (*s - '0');
    if (exp_negative) exponent = -exponent;
  }
  if (!ends_token(s, end)) return NULL;
  long e10 = exponent - fraction;
  if (m == 0) {
    *out = negative ? -0.0 : 0.0;
  } else if (!truncated && m <= (UINT64_C(1) << 53) && e10 >= -22 && e10 <= 22) {
    double v = e10 < 0 ? (double)m / kPow10[-e10] : (double)m * kPow10[e10];
    *out = negative ? -v : v;
  } else {                                /* rare: let strtod round the exact decimal */
    char buf[128];
    size_t n = (size_t)(s - p);
    if (n >= sizeof buf) return NULL;
    memcpy(buf, p, n);
    buf[n] = '\0';
    char *stop;
    *out = strtod(buf, &stop);
    if (stop != buf + n) return NULL;
  }
  return s;
}

static uint64_t load8(const char *s) {
  uint64_t w;
  memcpy(&w, s, 8);
  return w;
}

/* The index of the first byte below 0x21 (blank, newline, control) of a little-endian word, or 8. */
static int first_stop(uint64_t w) {
  uint64_t t = (w - UINT64_C(0x2121212121212121)) & ~w & UINT64_C(0x8080808080808080);
  return t ? __builtin_ctzll(t) >> 3 : 8;
}

/* The common token, [+-]digits[.digits] of at most 15 characters, without a branch per character
 * (branch mispredictions dominated a loop with a branch per character: 230 -> ~400 MB/s on one
 * core, file in memory). NULL: parse_token's job.
 * Needs 24 readable bytes from p. */
static const char *parse_plain(const char *p, double *out) {
  const char *s = p;
  int negative = *s == '-';
  s += negative | (*s == '+');
  int length = first_stop(load8(s));
  if (length == 8) length += first_stop(load8(s + 8));
  if (length == 0 || length > 15 || (s[length] != '\n' && !is_blank(s[length]))) return NULL;
  uint64_t m = 0;
  int dots = 0, fraction = 0, bad = 0;
  for (int i = 0; i < length; i++) {
    unsigned d = (unsigned)(unsigned char)s[i] - '0';
    int digit = d < 10, dot = s[i] == '.';
    bad |= !(digit | dot);
    m = digit ? m * 10 + d : m;
    fraction += dots & digit;
    dots += dot;
  }
  if (bad || dots > 1 || length == dots) return NULL;
  double v = fraction ? (double)m / kPow10[fraction] : (double)m;  /* m < 10^15: exact */
  *out = negative ? -v : v;
  return s + length;
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HAVE_SIMD 1
#define SIMD_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi2,popcnt")))

/* parse_plain's token with AVX-512: the 16 bytes from the token's first digit or dot classified at
 * once, its digits squeezed together and right-aligned (VBMI2 compress, expand), then summed in
 * pairs, quads and eights by multiply-adds. No branch depends on the token's length. (Dividing a
 * row's values at once in vector registers instead of one division a token was no faster.) */
SIMD_TARGET static inline const char *parse_plain_simd(const char *p, double *out) {
  int negative = *p == '-';
  const char *s = p + (negative | (*p == '+'));
  __m128i v = _mm_loadu_si128((const __m128i *)s);
  unsigned length = __builtin_ctz(_mm_cmple_epu8_mask(v, _mm_set1_epi8(0x20)) | 0x10000u);
  unsigned within = (1u << length) - 1;
  __m128i d = _mm_sub_epi8(v, _mm_set1_epi8('0'));
  unsigned digit = _mm_cmplt_epu8_mask(d, _mm_set1_epi8(10)) & within;
  unsigned dot = _mm_cmpeq_epi8_mask(v, _mm_set1_epi8('.')) & within;
  int n = __builtin_popcount(digit);
  if (length > 15 || (digit | dot) != within || (dot & (dot - 1)) || n == 0) return NULL;
  if (s[length] != '\n' && !is_blank(s[length])) return NULL;
  int fraction = dot ? (int)length - 1 - __builtin_ctz(dot) : 0;
  __m128i digits = _mm_maskz_expand_epi8((__mmask16)(0xFFFFu << (16 - n)),
                                         _mm_maskz_compress_epi8((__mmask16)digit, d));
  __m128i pairs = _mm_maddubs_epi16(digits, _mm_set1_epi16(0x010A));      /* 10 a + b */
  __m128i quads = _mm_madd_epi16(pairs, _mm_set1_epi32(0x00010064));       /* 100 ab + cd */
  __m128i eights = _mm_madd_epi16(_mm_packus_epi32(quads, quads), _mm_set1_epi32(0x00012710));
  uint64_t m = (uint64_t)(uint32_t)_mm_cvtsi128_si32(eights) * 100000000u +
               (uint32_t)_mm_extract_epi32(eights, 1);
  double value = (double)m / kPow10[fraction];             /* m < 10^15: exact, as parse_plain */
  *out = negative ? -value : value;
  return s + length;
}
#endif

/* Rows of `columns` tokens from text[0, n) into out (room for max_rows rows); -1 as above. `simd`
 * is a constant in each caller below, so each gets its own loop with one token reader inlined. */
static inline __attribute__((always_inline)) Py_ssize_t parse_rows(
    const char *text, Py_ssize_t n, int columns, double *out, Py_ssize_t max_rows, int simd) {
  const char *p = text, *end = text + n;
  Py_ssize_t row = 0;
  int col = 0;
  (void)simd;
  while (p < end) {
    char c = *p;
    if (is_blank(c)) {
      p++;
    } else if (c == '\n') {
      if (col) {
        if (col != columns) return -1;
        row++;
        col = 0;
      }
      p++;
    } else {
      if (col == columns || row == max_rows) return -1;
      double *slot = out + row * columns + col;
      const char *next = NULL;
      if (end - p >= 24) {
#ifdef HAVE_SIMD
        next = simd ? parse_plain_simd(p, slot) : parse_plain(p, slot);
#else
        next = parse_plain(p, slot);
#endif
      }
      p = next ? next : parse_token(p, end, slot);
      if (p == NULL) return -1;
      col++;
    }
  }
  if (col) {
    if (col != columns) return -1;
    row++;
  }
  return row;
}

#ifdef HAVE_SIMD
SIMD_TARGET static Py_ssize_t parse_rows_simd(const char *text, Py_ssize_t n, int columns,
                                              double *out, Py_ssize_t max_rows) {
  return parse_rows(text, n, columns, out, max_rows, 1);
}
#endif

static int have_simd(void) {
#ifdef HAVE_SIMD
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vbmi2");
#else
  return 0;
#endif
}

static int simd_ok;  /* set once at import */

static Py_ssize_t parse_text(const char *text, Py_ssize_t n, int columns, double *out,
                             Py_ssize_t max_rows, int portable) {
#ifdef HAVE_SIMD
  if (simd_ok && !portable) return parse_rows_simd(text, n, columns, out, max_rows);
#endif
  return parse_rows(text, n, columns, out, max_rows, 0);
}

static PyObject *parse(PyObject *self, PyObject *args) {
  (void)self;
  Py_buffer text, out;
  int columns, final, portable = 0;
  Py_ssize_t start_row;
  if (!PyArg_ParseTuple(args, "y*iw*np|p", &text, &columns, &out, &start_row, &final, &portable))
    return NULL;
  Py_ssize_t row_bytes = (Py_ssize_t)sizeof(double) * (columns > 0 ? columns : 1);
  if (columns <= 0 || out.len % row_bytes || start_row < 0 || start_row > out.len / row_bytes) {
    PyBuffer_Release(&text);
    PyBuffer_Release(&out);
    PyErr_SetString(PyExc_ValueError, "parse: out must hold whole rows of `columns` float64, "
                    "start_row within them");
    return NULL;
  }
  Py_ssize_t max_rows = out.len / row_bytes - start_row, rows, used = text.len;
  const char *chars = (const char *)text.buf;
  Py_BEGIN_ALLOW_THREADS
  if (!final) {                          /* whole lines only: the rest comes with the next piece */
    while (used > 0 && chars[used - 1] != '\n') used--;
  }
  rows = parse_text(chars, used, columns, (double *)out.buf + start_row * columns, max_rows,
                    portable);
  Py_END_ALLOW_THREADS
  PyBuffer_Release(&text);
  PyBuffer_Release(&out);
  return Py_BuildValue("nn", rows < 0 ? rows : start_row + rows, used);
}

static PyMethodDef methods[] = {
    {"parse", parse, METH_VARARGS,
     "parse(text, columns, out, start_row, final[, portable]) -> (end row in out or -1, bytes "
     "used)."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_datparse",
                                    "Exact fast parser of numeric text tables.", -1, methods};

PyMODINIT_FUNC PyInit__datparse(void) {
  PyObject *m = PyModule_Create(&module);
  simd_ok = have_simd();
  if (m && PyModule_AddStringConstant(m, "SIMD", simd_ok ? "avx512" : "") < 0) {
    Py_DECREF(m);
    return NULL;
  }
  return m;
}
