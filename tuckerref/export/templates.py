"""C99 templates of the exported network (``string.Template``: ``$name`` is filled in, ``$$`` is '$').

Each layer kind has one function template; its sizes are filled in as ``const int`` locals so
the C compiler sees constant loop bounds. The templates are the whole of the generated C: the
writer (:mod:`tuckerref.export.writer`) only computes the numbers that go into them.
"""
from string import Template

# --------------------------------------------------------------------------------------------
# net.h
# --------------------------------------------------------------------------------------------
NET_H = Template("""\
/* net.h, exported by tuckerref export-c (plain C99, float32):
 * $title.
 *
 * Input:  one clip of NET_INPUT_SIZE floats, C x F x H x W = $input_dims (NCDHW, batch 1).
 * Output: NET_OUTPUT_SIZE logits.
 * net_forward allocates nothing: the caller passes a scratch array of NET_SCRATCH_FLOATS floats
 * (footprint.json, written beside these sources, lists it unit by unit).
 *
 * Layers in execution order, with their output shape and FLOPs (the authors' counting convention:
 * a convolution costs T*I'*(2*S*Lambda - 1) plus I' with a bias, a linear layer (2*in - 1)*out
 * plus out with a bias; max pooling and ReLU count zero, other layers as tuckerref.flops counts them):
 *
$layer_table
 */
#ifndef NET_H
#define NET_H

$size_macros

/* FLOPs of each computing layer */
$flops_macros

/* Runs the network on one clip: input (NET_INPUT_SIZE floats) -> logits (NET_OUTPUT_SIZE floats). */
void net_forward(const float *input, float *logits, float *scratch);

/* Runs computing layer `layer` (0 .. NET_NUM_LAYERS-1) alone, unfused, in a scratch array of
 * NET_LAYERWISE_SCRATCH_FLOATS floats. Calling layers 0, 1, ... in order computes what net_forward
 * does; main.c times each. */
void net_run_layer(int layer, const float *input, float *logits, float *scratch);

/* Name (PyTorch module path), layer type and FLOPs of computing layer `layer`. */
const char *net_layer_name(int layer);
const char *net_layer_type(int layer);
double net_layer_flops(int layer);
$load_prototype
#endif /* NET_H */
""")


LOAD_PROTOTYPE = """
/* Reads the parameter blob written by tuckerref export-c (weights.bin) into static storage.
 * Returns 0 on success, -1 (after a message on stderr) if the file is missing or does not match. */
int net_load_weights(const char *path);
"""

# --------------------------------------------------------------------------------------------
# net.c
# --------------------------------------------------------------------------------------------
NET_C = Template("""\
/* net.c, exported by tuckerref export-c:
 * $title.
 *
 * One function per layer, each with the equation it implements, and one per fused unit. Tensors are
 * float32 in C order (channels, frames, height, width), batch 1. Nothing is allocated: net_forward
 * runs the units of the static memory plan in one caller-provided arena of NET_SCRATCH_FLOATS floats
 * (each unit's input at one end, its output at the other, its working frames beside one of them);
 * net_run_layer runs single layers, alternating between buffer A at the start of an arena of
 * NET_LAYERWISE_SCRATCH_FLOATS floats and buffer B ending at its end.
 */
#include <math.h>
$includes
#include "net.h"
$parameters
$helpers$layer_functions
/* ---- the network --------------------------------------------------------------------------- */

static const struct {
    const char *name;
    const char *type;
    double flops;
} net_layers[NET_NUM_LAYERS] = {
$layer_records
};

const char *net_layer_name(int layer)
{
    return layer >= 0 && layer < NET_NUM_LAYERS ? net_layers[layer].name : "";
}

const char *net_layer_type(int layer)
{
    return layer >= 0 && layer < NET_NUM_LAYERS ? net_layers[layer].type : "";
}

double net_layer_flops(int layer)
{
    return layer >= 0 && layer < NET_NUM_LAYERS ? net_layers[layer].flops : 0.0;
}

void net_run_layer(int layer, const float *input, float *logits, float *scratch)
{
    (void)input;
    (void)logits;
    (void)scratch;
    switch (layer) {
$dispatch
    default:
        break;
    }
}

void net_forward(const float *input, float *logits, float *scratch)
{
    /* the static memory plan: offsets in floats into the scratch arena of NET_SCRATCH_FLOATS */
$forward_calls
}
""")

ARRAY_PARAMETERS = """\
#include "weights.h"   /* the parameters, as const float arrays (weights.c) */
"""

BLOB_PARAMETERS = Template("""\

/* ---- parameters: one static array filled by net_load_weights from the blob ------------------ */

static float net_params[NET_PARAM_FLOATS];

$pointers
/* Blob layout: 8-byte magic "TKREFW1\\0", the float count as a little-endian uint32, the float 1.0f
 * (byte-order check), then NET_PARAM_FLOATS float32 values in the order above. */
int net_load_weights(const char *path)
{
    static const unsigned char magic[8] = {'T', 'K', 'R', 'E', 'F', 'W', '1', '\\0'};
    unsigned char header[16];
    unsigned long count;
    float one;
    FILE *f = fopen(path, "rb");

    if (f == NULL) {
        fprintf(stderr, "net_load_weights: cannot open %s\\n", path);
        return -1;
    }
    if (fread(header, 1, sizeof header, f) != sizeof header || memcmp(header, magic, sizeof magic) != 0) {
        fprintf(stderr, "net_load_weights: %s is not a tuckerref weight blob\\n", path);
        fclose(f);
        return -1;
    }
    count = (unsigned long)header[8] | (unsigned long)header[9] << 8 | (unsigned long)header[10] << 16
            | (unsigned long)header[11] << 24;
    memcpy(&one, header + 12, sizeof one);
    if (count != NET_PARAM_FLOATS || one != 1.0f) {
        fprintf(stderr, "net_load_weights: %s holds %lu floats (this network needs %lu) or has "
                "another byte order\\n", path, count, (unsigned long)NET_PARAM_FLOATS);
        fclose(f);
        return -1;
    }
    if (fread(net_params, sizeof(float), NET_PARAM_FLOATS, f) != NET_PARAM_FLOATS || fgetc(f) != EOF) {
        fprintf(stderr, "net_load_weights: %s is truncated or has trailing bytes\\n", path);
        fclose(f);
        return -1;
    }
    fclose(f);
    return 0;
}
""")

BLOB_POINTER = Template("static const float *const $ident = net_params + $offset;  /* $name $shape */\n")

# The convolution's register tile and multiply-add. FP_FAST_FMAF (C99 <math.h>) says fmaf is as fast
# as a multiply and an add: then the fused form, which GCC does not contract on its own under -std=c99.
TILE_HELPERS = """
/* ---- convolution tiles --------------------------------------------------------------------- */

/* Floats a convolution's register tile accumulates, at most: 64 where the target has AVX (its 16
 * 256-bit registers hold the tile's 8 vectors, two input vectors and the weights), else 128 (a tile
 * the compiler keeps in memory, where wider tiles amortise the loop); define NET_TILE_FLOATS to choose.
 * A tile of n (channel, row) pairs spans NET_TILE_COLUMNS(n) output columns: NET_TILE_FLOATS / n
 * rounded down to a multiple of 8, 8 to 32, in two halves that each input row's taps feed together. */
#ifndef NET_TILE_FLOATS
#ifdef __AVX__
#define NET_TILE_FLOATS 64
#else
#define NET_TILE_FLOATS 128
#endif
#endif
/* Kernel taps a tile takes per pass over its accumulators: 1 where AVX registers hold the tile, else 2
 * (where the compiler keeps the tile in memory, each accumulator is then read and written once per two
 * multiply-adds); define NET_TILE_TAPS to choose. */
#ifndef NET_TILE_TAPS
#ifdef __AVX__
#define NET_TILE_TAPS 1
#else
#define NET_TILE_TAPS 2
#endif
#endif
#define NET_TILE_COLUMNS_(n) ((n) < 8 ? 8 : (n) > 32 ? 32 : (n))
#define NET_TILE_COLUMNS(n) NET_TILE_COLUMNS_(NET_TILE_FLOATS / (n) / 8 * 8)

/* Before a tile's column loop of few statements: keeps GCC from unrolling it completely before
 * vectorising it (it would then stay scalar); nothing elsewhere. */
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 8
#define NET_NO_UNROLL _Pragma("GCC unroll 1")
#else
#define NET_NO_UNROLL
#endif

/* An input value a tile loads once and feeds to several multiply-adds. Under GCC with AVX, x + 0.0f:
 * GCC 12 otherwise reads a vector it uses four times or fewer again from memory in every multiply-add
 * (a memory operand each, the load it replaces being taken as worth more), which makes the tile wait
 * on loads (the paper network's Tucker core, 2 channels x 2 rows x 16 columns: 52 ms instead of 31 ms
 * at -O3 -march=native on Zen 3). Exact but for the sign of a zero input (-0.0f + 0.0f is +0.0f),
 * which can change no sum but an exact zero's sign; x itself elsewhere. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__AVX__)
#define NET_KEEP(x) ((x) + 0.0f)
#else
#define NET_KEEP(x) (x)
#endif

/* a * b + c, fused where the target has a fast fmaf */
#ifdef FP_FAST_FMAF
#define NET_MADD(a, b, c) fmaf(a, b, c)
#else
#define NET_MADD(a, b, c) ((a) * (b) + (c))
#endif
"""

# --------------------------------------------------------------------------------------------
# layer functions
# --------------------------------------------------------------------------------------------
LAYER_HEADER = Template("""
/* ---- $path: $description
 * input $in_dims -> output $out_dims, $flops FLOPs
 *
$equation */
""")

CONV3D_EQUATION = """\
 * Eq. (1), PyTorch's cross-correlation:
 *   Y(t, f', h', w') = b(t) + sum_{s, i, j, l} K(t, s, i, j, l) X(s, f_i, h_j, w_l),
 *   f_i = f'*stride_F + i - pad_F (likewise h_j, w_l); taps in the zero padding add nothing.
 * (With a Tucker core as K this is eq. (9).) Computed in register tiles: CT output channels by R
 * consecutive output rows by VW consecutive output columns, whose whole sum over (s, i, j, l) is
 * accumulated in a local array before one store. With stride 1 along H, input row h feeds output row
 * h' through kernel row j = h - h' + pad_H, so the tile runs over the R + kH - 1 input rows of its
 * window and each input value read feeds up to CT x R multiply-adds; the inner loop runs over the
 * VW / 2 columns of both halves of the tile at once, which a C99 compiler vectorises (each weight then
 * feeds two vectors, and the tile holds 2 x CT x R independent sums). A tile whose taps reach into the
 * padding or past the row reads a copy of its input row segment, zero where it lies outside the row.
"""

CONV3D = Template("""\
/* One output frame od of the convolution: Y(:, od, :, :) into y, channel t at y + t*ycs. Input frame f
 * of channel s is read at x + (f % ring)*xfs + s*xcs, so that the same code reads a whole tensor
 * (xcs = D*H*XW, xfs = H*XW, ring = D) or a ring of the frames a fused block keeps (see net_forward).
 * Its rows are XW = XL + W + XR floats apart, value w at column XL + w: where a 1x1x1 factor writes
 * this input it pads each row with zeros (XL, XR > 0), so that no tile has to copy an edge. */
static void ${func}_frame(const float *restrict x, int xcs, int xfs, int ring, int od, float *restrict y, int ycs)
{
    /* input: S channels of D x H x W; output: T channels of OD x OH x OW */
    const int S = $S, D = $D, H = $H, W = $W;
    const int T = $T, OH = $OH, OW = $OW;
    /* kernel, stride and zero padding */
    const int KD = $KD, KH = $KH, KW = $KW;
    const int SD = $SD, SH = $SH, SW = $SW;
    const int PD = $PD, PH = $PH, PW = $PW;
    const int XL = $XL, XR = $XR, XW = $XW;  /* zero columns before and after each input row, row stride */
    const int TS = S * KD * KH * KW;  /* floats from one output channel's kernel to the next */
    const float *const weight = $weight;  /* (T, S, KD, KH, KW) */
    /* a tile: CT output channels (CT divides T) by R output rows by VW output columns, R*CT*VW floats of
     * stack in acc, in two halves of VH = VW/2 columns; its window spans ROWS input rows, and SPAN input
     * columns feed one row of it */
    enum { CT = $CT, R = $R, VW = NET_TILE_COLUMNS($CTR), VH = VW / 2, SPAN = (VW - 1) * $SW + $KW,
           ROWS = (R - 1) * $SH + $KH };
    float xe[SPAN];  /* an edge tile's input row segment, zero outside 0..W-1 */
    int t0, c, q, oh, ow, s, i, r, l, v, n;

    for (t0 = 0; t0 < T; t0 += CT)
        for (oh = 0; oh < OH; oh += R)
            for (ow = 0; ow < OW; ow += VW) {
                const int w0 = ow * SW - PW;  /* input column of the tile's first tap */
                const int inside = w0 >= -XL && w0 + SPAN <= W + XR;  /* every tap inside the (padded) row */
                const int nv = OW - ow < VW ? OW - ow : VW;    /* columns stored (the last tile may be short) */
                const int nr = OH - oh < R ? OH - oh : R;      /* rows stored */
                /* an edge tile's taps xe[n] = row[w0 + n] lie inside the row for n in ea..eb-1 */
                const int ea = w0 >= 0 ? 0 : -w0 < SPAN ? -w0 : SPAN;
                const int eb = W - w0 < ea ? ea : W - w0 < SPAN ? W - w0 : SPAN;
                float acc[R][CT][VW];
                for (q = 0; q < R; ++q)
                    for (c = 0; c < CT; ++c)
                        for (v = 0; v < VW; ++v)
                            acc[q][c][v] = 0.0f;
                /* The same sums in two copies of the loops, so that the compiler keeps the tile in registers
                 * in the first, where no copy loop takes registers between its blocks */
                if (inside)  /* every tap inside the (padded) row: its segment read in place */
$window_in_place                else {  /* an edge tile: a copy of each row segment, zero in the padding and past the row */
                    for (n = 0; n < SPAN; ++n)
                        xe[n] = 0.0f;
$window_edge                }
                for (q = 0; q < nr; ++q)
                    for (c = 0; c < CT; ++c) {
                        float *const yrow = y + (t0 + c) * ycs + (oh + q) * OW + ow;
                        const float b = $init;
                        for (v = 0; v < nv; ++v)
                            yrow[v] = b + acc[q][c][v];
                    }
            }
}

static void $func(const float *restrict x, float *restrict y)
{
    const int D = $D, H = $H, XW = $XW, OD = $OD, OH = $OH, OW = $OW;  /* XW: floats per input row */
    int od;

    for (od = 0; od < OD; ++od)
        ${func}_frame(x, D * H * XW, H * XW, D, od, y + od * OH * OW, OD * OH * OW);
}
""")

# A convolution tile's loops over its window (input channels s, kernel frames i, window rows r), each row
# handing the tile's taps ($tile_taps) the segment xb: CONV3D renders it twice, with xb the row in place
# ($row = "") and with xb an edge copy ($row: the copy's lines).
CONV3D_WINDOW = Template("""\
${pad}for (s = 0; s < S; ++s)
${pad}    for (i = 0; i < KD; ++i) {
${pad}        const int f = od * SD + i - PD;
${pad}        const float *plane, *k;
${pad}        if (f < 0 || f >= D)
${pad}            continue;
${pad}        plane = x + (f % ring) * xfs + s * xcs;
${pad}        k = weight + ((t0 * S + s) * KD + i) * KH * KW;  /* K(t0, s, i, 0, 0) */
${pad}        for (r = 0; r < ROWS; ++r) {  /* input row h of the window; output row oh + q takes it as j = r - q */
${pad}            const int h = oh * SH + r - PH;
${row_declaration}${pad}            if (h < 0 || h >= H)
${pad}                continue;
${row_copy}${pad}            {
${pad}                const float *restrict xb = $xb;
$tile_taps${pad}            }
${pad}        }
${pad}    }
""")

POINTWISE_EQUATION = """\
 * Eqs. (8) and (10): a 1x1x1 convolution mixes channels at every one of the P = F*H*W positions,
 *   Y(t, p) = b(t) + sum_s U(t, s) X(s, p),
 * i.e. a (T x S) by (S x P) matrix product, done in blocks of positions that stay in cache.
"""

POINTWISE_ROWS = Template("""\
/* n positions: channel s of the input at x + s*xcs, channel t of the output at y + t*ycs. */
static void ${func}_rows(const float *restrict x, int xcs, float *restrict y, int ycs, int n_positions)
{
    const int S = $S, T = $T;          /* input channels, output channels */
    const int BLOCK = 1024;            /* positions per cache block */
    const float *const weight = $weight;  /* (T, S) */
    int p0, t, s, p;

    /* each output channel's block: the bias and input channel 0 in the pass that writes it, then two
     * input channels per pass over it */
    for (p0 = 0; p0 < n_positions; p0 += BLOCK) {
        const int n = n_positions - p0 < BLOCK ? n_positions - p0 : BLOCK;
        for (t = 0; t < T; ++t) {
            float *const yt = y + t * ycs + p0;
            const float b = $init, u0 = weight[t * S];
            const float *const x0 = x + p0;
            for (p = 0; p < n; ++p)
                yt[p] = b + u0 * x0[p];
            for (s = 1; s + 1 < S; s += 2) {
                const float u = weight[t * S + s], v = weight[t * S + s + 1];
                const float *const xs = x + s * xcs + p0, *const xq = xs + xcs;
                for (p = 0; p < n; ++p)
                    yt[p] += u * xs[p] + v * xq[p];
            }
            if (s < S) {
                const float u = weight[t * S + s];
                const float *const xs = x + s * xcs + p0;
                for (p = 0; p < n; ++p)
                    yt[p] += u * xs[p];
            }
        }
    }
}
""")

#: The 1x1x1 convolution's layer function over a whole tensor, and over one whose rows are padded.
POINTWISE_LAYER = Template("""
static void $func(const float *restrict x, float *restrict y)
{
    ${func}_rows(x, $P, y, $P, $P);
}
""")

POINTWISE_PADDED = Template("""
/* n_rows rows of W positions into rows padded with zeros (the layout the next convolution reads): input
 * row r at x + r*W, output row r at y + r*WP, its values at columns PL..PL+W-1 and zeros around them;
 * channel s of the input at x + s*xcs, channel t of the output at y + t*ycs. */
static void ${func}_padded_rows(const float *restrict x, int xcs, float *restrict y, int ycs, int n_rows)
{
    const int T = $T, W = $W, WP = $WP, PL = $PL;  /* output channels, row, padded row, left zeros */
    int r, t, n;

    for (r = 0; r < n_rows; ++r) {
        for (t = 0; t < T; ++t) {
            float *const yr = y + t * ycs + r * WP;
            for (n = 0; n < PL; ++n)
                yr[n] = 0.0f;
            for (n = PL + W; n < WP; ++n)
                yr[n] = 0.0f;
        }
        ${func}_rows(x + r * W, xcs, y + r * WP + PL, ycs, W);
    }
}

static void $func(const float *restrict x, float *restrict y)
{
    ${func}_padded_rows(x, $P, y, $PP, $ROWS);
}
""")

LINEAR_EQUATION = """\
 * Fully connected layer (PyTorch Linear, weight (out, in)):
 *   y(o) = b(o) + sum_i W(o, i) x(i).
"""

LINEAR = Template("""\
static void $func(const float *restrict x, float *restrict y)
{
    const int IN = $IN, OUT = $OUT;
    const float *const weight = $weight;  /* (OUT, IN) */
    int o, i;

    for (o = 0; o < OUT; ++o) {
        const float *const w = weight + o * IN;
        float acc = $init;
        for (i = 0; i < IN; ++i)
            acc += w[i] * x[i];
        y[o] = acc;
    }
}
""")

MAXPOOL3D_EQUATION = """\
 * 3-D max pooling (PyTorch max_pool3d, floor mode):
 *   Y(c, f', h', w') = max_{i, j, l} X(c, f'*stride_F + i - pad_F, h'*stride_H + j - pad_H, w'*stride_W + l - pad_W),
 * the padding counting as -infinity; a NaN in the window propagates.
"""

MAXPOOL3D = Template("""\
static void $func(const float *restrict x, float *restrict y)
{
    /* input: C channels of D x H x W; output: C channels of OD x OH x OW */
    const int C = $C, D = $D, H = $H, W = $W;
    const int OD = $OD, OH = $OH, OW = $OW;
    /* window, stride and padding (the padding counts as -infinity) */
    const int KD = $KD, KH = $KH, KW = $KW;
    const int SD = $SD, SH = $SH, SW = $SW;
    const int PD = $PD, PH = $PH, PW = $PW;
    float m[$W];  /* the maxima over the window's frames and rows, column by column */
    int c, od, oh, ow, i, j, l, w;

    /* one output row at a time: first the maximum over the window's KD x KH input rows, column by column
     * (contiguous, vectorisable), then over each window's KW columns of that one row */
    for (c = 0; c < C; ++c)
        for (od = 0; od < OD; ++od)
            for (oh = 0; oh < OH; ++oh) {
                float *const yrow = y + ((c * OD + od) * OH + oh) * OW;
                for (w = 0; w < W; ++w)
                    m[w] = -INFINITY;
                for (i = 0; i < KD; ++i) {
                    const int f = od * SD + i - PD;
                    if (f < 0 || f >= D)
                        continue;
                    for (j = 0; j < KH; ++j) {
                        const int h = oh * SH + j - PH;
                        const float *xrow;
                        if (h < 0 || h >= H)
                            continue;
                        xrow = x + ((c * D + f) * H + h) * W;
                        for (w = 0; w < W; ++w) {
                            const float v = xrow[w];
                            m[w] = v > m[w] || v != v ? v : m[w];  /* a NaN stays */
                        }
                    }
                }
                for (ow = 0; ow < OW; ++ow)
                    yrow[ow] = -INFINITY;
                for (l = 0; l < KW; ++l) {
                    /* the columns ow in lo..hi-1 have their tap ow*SW + l - PW inside 0..W-1 */
                    const int lo = l >= PW ? 0 : (PW - l + SW - 1) / SW;
                    const int last = W - 1 - l + PW;
                    const int hi = last < 0 ? 0 : last / SW + 1 < OW ? last / SW + 1 : OW;
                    for (ow = lo; ow < hi; ++ow) {
                        const float v = m[ow * SW + l - PW];
                        yrow[ow] = v > yrow[ow] || v != v ? v : yrow[ow];
                    }
                }
            }
}
""")

MAXPOOL3D_FRAME = Template("""\
/* Max pooling fed one input frame f (C channels of H x W at x) at a time: every output frame whose
 * window holds f takes the maximum with it; y starts at -infinity, or at 0 when a ReLU is fused. */
static void ${func}_frame(const float *restrict x, int f, float *restrict y)
{
    const int C = $C, D = $D, H = $H, W = $W;
    const int OD = $OD, OH = $OH, OW = $OW;
    const int KD = $KD, KH = $KH, KW = $KW;
    const int SD = $SD, SH = $SH, SW = $SW;
    const int PD = $PD, PH = $PH, PW = $PW;
    int c, od, oh, ow, j, l;

    (void)D;
    for (od = 0; od < OD; ++od) {
        if (f < od * SD - PD || f >= od * SD - PD + KD)
            continue;
        for (c = 0; c < C; ++c)
            for (oh = 0; oh < OH; ++oh)
                for (ow = 0; ow < OW; ++ow) {
                    float *const out = y + ((c * OD + od) * OH + oh) * OW + ow;
                    float best = *out;
                    for (j = 0; j < KH; ++j) {
                        const int h = oh * SH + j - PH;
                        const float *xrow;
                        if (h < 0 || h >= H)
                            continue;
                        xrow = x + (c * H + h) * W;
                        for (l = 0; l < KW; ++l) {
                            const int w = ow * SW + l - PW;
                            if (w >= 0 && w < W && (xrow[w] > best || isnan(xrow[w])))
                                best = xrow[w];
                        }
                    }
                    *out = best;
                }
    }
}
""")

STREAM_EQUATION = """\
 * Fused, frame by frame, so that no full-resolution intermediate is stored: for each output frame od
 * of the convolution, the first 1x1x1 factor (eq. (8)) computes only the input frames of od's window
 * not yet in the ring of min(kD, D) frames, the convolution (eq. (1); eq. (9) for a Tucker core)
 * computes frame od, the last 1x1x1 factor (eq. (10)) maps it to the output channels and the max
 * pooling takes its maximum with it (a ReLU next to the pooling commutes with the maximum and is
 * applied by starting the maxima at 0).
"""

STREAM = Template("""\
static void $func(const float *restrict x, float *restrict y, float *restrict work)
{
    const int OD = $OD, FRAME = $FRAME;  /* convolution output frames, floats per frame (OH*OW) */
$declarations    int od;

$setup    for (od = 0; od < OD; ++od) {
$body    }
}
""")

AVGPOOL3D_EQUATION = """\
 * 3-D average pooling (PyTorch avg_pool3d):
 *   Y(c, f', h', w') = (1 / N) sum_{i, j, l} X(c, f_i, h_j, w_l),
 *   f_i = f'*stride_F + i - pad_F (likewise h_j, w_l), the zero padding adding nothing to the sum.
 * N is divisor_override when given, else with count_include_pad the window's volume (floor mode
 * keeps every window inside the padded input), else the window's cells inside the input.
"""

AVGPOOL3D = Template("""\
static void $func(const float *restrict x, float *restrict y)
{
    /* input: C channels of D x H x W; output: C channels of OD x OH x OW */
    const int C = $C, D = $D, H = $H, W = $W;
    const int OD = $OD, OH = $OH, OW = $OW;
    /* window, stride and zero padding */
    const int KD = $KD, KH = $KH, KW = $KW;
    const int SD = $SD, SH = $SH, SW = $SW;
    const int PD = $PD, PH = $PH, PW = $PW;
    int c, od, oh, ow, f, h, w;

    for (c = 0; c < C; ++c)
        for (od = 0; od < OD; ++od)
            for (oh = 0; oh < OH; ++oh)
                for (ow = 0; ow < OW; ++ow) {
                    /* the window starts at (f0, h0, w0) of the unpadded input, possibly in the padding */
                    const int f0 = od * SD - PD, h0 = oh * SH - PH, w0 = ow * SW - PW;
                    /* its cells inside the input: fa..fb-1, ha..hb-1, wa..wb-1 */
                    const int fa = f0 < 0 ? 0 : f0, fb = f0 + KD < D ? f0 + KD : D;
                    const int ha = h0 < 0 ? 0 : h0, hb = h0 + KH < H ? h0 + KH : H;
                    const int wa = w0 < 0 ? 0 : w0, wb = w0 + KW < W ? w0 + KW : W;
                    $divisor
                    float sum = 0.0f;
                    for (f = fa; f < fb; ++f)
                        for (h = ha; h < hb; ++h) {
                            const float *const xrow = x + ((c * D + f) * H + h) * W;
                            for (w = wa; w < wb; ++w)
                                sum += xrow[w];
                        }
                    y[((c * OD + od) * OH + oh) * OW + ow] = sum / n;
                }
}
""")

#: The declaration of AVGPOOL3D's divisor n, by pooling option.
AVGPOOL3D_DIVISOR = {
    "override": "const float n = {value};  /* divisor_override */",
    "inside": "const float n = (float)((fb - fa) * (hb - ha) * (wb - wa));  /* cells inside the input */",
    "window": "const float n = (float)(KD * KH * KW);  /* the whole window, padding included */",
}

ADAPTIVE_AVGPOOL3D_EQUATION = """\
 * 3-D adaptive average pooling (PyTorch adaptive_avg_pool3d): output index o of an axis of input
 * size n and output size m averages the input cells floor(o*n/m) .. ceil((o+1)*n/m) - 1,
 *   Y(c, f', h', w') = mean of X(c, f, h, w) over that box (output 1 x 1 x 1: global average pooling).
"""

ADAPTIVE_AVGPOOL3D = Template("""\
static void $func(const float *restrict x, float *restrict y)
{
    /* input: C channels of D x H x W; output: C channels of OD x OH x OW */
    const int C = $C, D = $D, H = $H, W = $W;
    const int OD = $OD, OH = $OH, OW = $OW;
    int c, od, oh, ow, f, h, w;

    for (c = 0; c < C; ++c)
        for (od = 0; od < OD; ++od)
            for (oh = 0; oh < OH; ++oh)
                for (ow = 0; ow < OW; ++ow) {
                    /* the box fa..fb-1, ha..hb-1, wa..wb-1 (floor of the start, ceiling of the end) */
                    const int fa = od * D / OD, fb = ((od + 1) * D + OD - 1) / OD;
                    const int ha = oh * H / OH, hb = ((oh + 1) * H + OH - 1) / OH;
                    const int wa = ow * W / OW, wb = ((ow + 1) * W + OW - 1) / OW;
                    float sum = 0.0f;
                    for (f = fa; f < fb; ++f)
                        for (h = ha; h < hb; ++h) {
                            const float *const xrow = x + ((c * D + f) * H + h) * W;
                            for (w = wa; w < wb; ++w)
                                sum += xrow[w];
                        }
                    y[((c * OD + od) * OH + oh) * OW + ow] = sum / (float)((fb - fa) * (hb - ha) * (wb - wa));
                }
}
""")

BATCHNORM3D_EQUATION = """\
 * Batch normalisation at inference (PyTorch batch_norm, eval mode, running statistics):
 *   Y(c, p) = (X(c, p) - mean(c)) / sqrt(var(c) + eps) * gamma(c) + beta(c),
 * computed as X(c, p) * scale(c) + shift(c). Runs in place when x == y.
"""

BATCHNORM3D = Template("""\
static void $func(const float *x, float *y)
{
    const int C = $C, P = $P;  /* channels, positions per channel */
    const float eps = $eps;
    const float *const mean = $mean, *const var = $var;  /* running statistics, (C,) */
    int c, p;

    for (c = 0; c < C; ++c) {
        const float scale = $gamma / sqrtf(var[c] + eps);
        const float shift = $beta - mean[c] * scale;
        const float *const xc = x + c * P;
        float *const yc = y + c * P;
        for (p = 0; p < P; ++p)
            yc[p] = xc[p] * scale + shift;
    }
}
""")

RELU_EQUATION = """\
 * ReLU: y = max(x, 0), NaN stays NaN. Runs in place when x == y.
"""

RELU = Template("""\
static void $func(const float *x, float *y)
{
    const int N = $N;
    int n;

    for (n = 0; n < N; ++n)
        y[n] = x[n] < 0.0f ? 0.0f : x[n];
}
""")

PAD_EQUATION = """\
 * The clip copied into rows padded with zeros, the layout the convolution after it reads (its tiles
 * then copy no edge): X(s, f, h, w) at column PL + w of a row of WP floats, zeros around it.
"""

PAD = Template("""\
/* n_rows rows of W values into rows padded with zeros: input row r at x + r*W, output row r at y + r*WP,
 * its values at columns PL..PL+W-1 and zeros around them; channel s at x + s*xcs and y + s*ycs. */
static void ${func}_padded_rows(const float *restrict x, int xcs, float *restrict y, int ycs, int n_rows)
{
    const int S = $S, W = $W, WP = $WP, PL = $PL;  /* channels, row, padded row, left zeros */
    int s, r, n;

    for (s = 0; s < S; ++s)
        for (r = 0; r < n_rows; ++r) {
            const float *const xr = x + s * xcs + r * W;
            float *const yr = y + s * ycs + r * WP;
            for (n = 0; n < PL; ++n)
                yr[n] = 0.0f;
            for (n = 0; n < W; ++n)
                yr[PL + n] = xr[n];
            for (n = PL + W; n < WP; ++n)
                yr[n] = 0.0f;
        }
}

static void $func(const float *restrict x, float *restrict y)
{
    ${func}_padded_rows(x, $P, y, $PP, $ROWS);
}
""")

COPY_EQUATION = """\
 * Identity: the network computes nothing at inference, so its input is its output.
"""

COPY = Template("""\
static void $func(const float *restrict x, float *restrict y)
{
    const int N = $N;
    int n;

    for (n = 0; n < N; ++n)
        y[n] = x[n];
}
""")

# --------------------------------------------------------------------------------------------
# weights.h / weights.c (array format)
# --------------------------------------------------------------------------------------------
WEIGHTS_H = Template("""\
/* weights.h: parameters of $title, defined in weights.c. */
#ifndef NET_WEIGHTS_H
#define NET_WEIGHTS_H

$declarations
#endif /* NET_WEIGHTS_H */
""")

WEIGHTS_C = Template("""\
/* weights.c: parameters of $title, float32.
 * One array per PyTorch parameter or buffer, its name and shape in a comment. Every value is printed with
 * 9 significant digits, which reads back as exactly the same float32. */
#include "weights.h"
$arrays""")

WEIGHT_ARRAY = Template("""
/* $name $shape */
const float $ident[$size] = {
$values
};
""")

# --------------------------------------------------------------------------------------------
# main.c and Makefile
# --------------------------------------------------------------------------------------------
MAIN_C = Template("""\
/* main.c: runs the exported network on clips from a raw float32 file and writes the logits.
 *
 *   ./net [-t N] [-W N] [-o TIMES.csv]$weights_usage INPUT.f32 LOGITS.f32
 *
 * INPUT.f32 holds one or more clips of NET_INPUT_SIZE float32 values each (C x F x H x W,
 * native byte order); LOGITS.f32 receives NET_OUTPUT_SIZE float32 logits per clip.
 * -t N times every layer during N forward passes of the first clip, after -W untimed warm-up
 * passes (default 1), and prints each layer's mean milliseconds per pass in process CPU time
 * (like Python's time.process_time) and wall time; -o writes every sample to a CSV file.
 */
#define _POSIX_C_SOURCE 199309L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "net.h"

#ifndef NET_SCRATCH_SHORTFALL
#define NET_SCRATCH_SHORTFALL 0
#endif

/* Milliseconds of CPU time used by this process. */
static double cpu_ms(void)
{
#ifdef CLOCK_PROCESS_CPUTIME_ID
    struct timespec ts;
    if (clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts) == 0)
        return 1e3 * (double)ts.tv_sec + 1e-6 * (double)ts.tv_nsec;
#endif
    return 1e3 * (double)clock() / CLOCKS_PER_SEC;
}

/* Milliseconds of wall time from an arbitrary origin. */
static double wall_ms(void)
{
#ifdef CLOCK_MONOTONIC
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) == 0)
        return 1e3 * (double)ts.tv_sec + 1e-6 * (double)ts.tv_nsec;
#endif
    return cpu_ms();
}

static int usage(const char *prog)
{
    fprintf(stderr, "usage: %s [-t N] [-W N] [-o TIMES.csv]$weights_usage INPUT.f32 LOGITS.f32\\n", prog);
    return 2;
}

/* Times each layer over `repeats` passes of `clip` after `warmup` untimed passes: prints the mean
 * CPU and wall milliseconds per layer and, if `csv_path` is set, writes every sample there. */
static int time_layers(const float *clip, float *logits, float *scratch, int warmup, int repeats,
                       const char *csv_path)
{
    float *layerwise = malloc((NET_LAYERWISE_SCRATCH_FLOATS > 0 ? NET_LAYERWISE_SCRATCH_FLOATS : 1) * sizeof(float));
    double *cpu = calloc((size_t)repeats * NET_NUM_LAYERS, sizeof(double));
    double *wall = calloc((size_t)repeats * NET_NUM_LAYERS, sizeof(double));
    double cpu_total = 0.0, wall_total = 0.0;
    int r, layer;
    FILE *csv = NULL;

    if (cpu == NULL || wall == NULL || layerwise == NULL) {
        fprintf(stderr, "time_layers: out of memory\\n");
        return 1;
    }
    for (r = 0; r < warmup; ++r)
        net_forward(clip, logits, scratch);
    for (r = 0; r < repeats; ++r)
        for (layer = 0; layer < NET_NUM_LAYERS; ++layer) {
            const double c0 = cpu_ms(), w0 = wall_ms();
            net_run_layer(layer, clip, logits, layerwise);
            wall[r * NET_NUM_LAYERS + layer] = wall_ms() - w0;
            cpu[r * NET_NUM_LAYERS + layer] = cpu_ms() - c0;
        }

    printf("%5s  %-24s %-10s %12s %12s %16s %9s\\n", "layer", "name", "type", "cpu ms", "wall ms", "MFLOP",
           "GFLOP/s");
    for (layer = 0; layer < NET_NUM_LAYERS; ++layer) {
        double c = 0.0, w = 0.0;
        const double mflop = net_layer_flops(layer) * 1e-6;
        for (r = 0; r < repeats; ++r) {
            c += cpu[r * NET_NUM_LAYERS + layer] / repeats;
            w += wall[r * NET_NUM_LAYERS + layer] / repeats;
        }
        cpu_total += c;
        wall_total += w;
        printf("%5d  %-24s %-10s %12.4f %12.4f %16.4f %9.3f\\n", layer, net_layer_name(layer),
               net_layer_type(layer), c, w, mflop, c > 0.0 ? mflop / c : 0.0);
    }
    printf("%5s  %-24s %-10s %12.4f %12.4f %16.4f %9.3f\\n", "total", "", "", cpu_total, wall_total,
           NET_TOTAL_FLOPS * 1e-6, cpu_total > 0.0 ? NET_TOTAL_FLOPS * 1e-6 / cpu_total : 0.0);

    if (csv_path != NULL) {
        csv = fopen(csv_path, "w");
        if (csv == NULL) {
            fprintf(stderr, "time_layers: cannot write %s\\n", csv_path);
            return 1;
        }
        fprintf(csv, "pass,layer,name,cpu_ms,wall_ms\\n");
        for (r = 0; r < repeats; ++r)
            for (layer = 0; layer < NET_NUM_LAYERS; ++layer)
                fprintf(csv, "%d,%d,%s,%.6f,%.6f\\n", r, layer, net_layer_name(layer),
                        cpu[r * NET_NUM_LAYERS + layer], wall[r * NET_NUM_LAYERS + layer]);
        if (fclose(csv) != 0) {
            fprintf(stderr, "time_layers: cannot write %s\\n", csv_path);
            return 1;
        }
    }
    free(cpu);
    free(wall);
    free(layerwise);
    return 0;
}

/* The value of option argv[*a] (advancing *a), or NULL when it is missing. */
static const char *option_value(int argc, char **argv, int *a)
{
    return *a + 1 < argc ? argv[++*a] : NULL;
}

int main(int argc, char **argv)
{
    const char *in_path = NULL, *out_path = NULL, *csv_path = NULL, *value;
    const char *weights_path = "weights.bin";
    int repeats = 0, warmup = 1, a;
    long bytes;
    size_t clips, c;
    float *input, *logits, *scratch;
    FILE *f;

    for (a = 1; a < argc; ++a) {
        if (strcmp(argv[a], "-t") == 0) {
            if ((value = option_value(argc, argv, &a)) == NULL || (repeats = atoi(value)) < 1)
                return usage(argv[0]);
        } else if (strcmp(argv[a], "-W") == 0) {
            if ((value = option_value(argc, argv, &a)) == NULL || (warmup = atoi(value)) < 0)
                return usage(argv[0]);
        } else if (strcmp(argv[a], "-o") == 0) {
            if ((csv_path = option_value(argc, argv, &a)) == NULL)
                return usage(argv[0]);
        } else if (strcmp(argv[a], "-w") == 0) {
            if ((weights_path = option_value(argc, argv, &a)) == NULL)
                return usage(argv[0]);
        } else if (in_path == NULL) {
            in_path = argv[a];
        } else if (out_path == NULL) {
            out_path = argv[a];
        } else {
            return usage(argv[0]);
        }
    }
    if (in_path == NULL || out_path == NULL)
        return usage(argv[0]);
#ifdef NET_WEIGHTS_BLOB
    if (net_load_weights(weights_path) != 0)
        return 1;
#else
    (void)weights_path;  /* the parameters are compiled in (weights.c) */
#endif

    f = fopen(in_path, "rb");
    if (f == NULL || fseek(f, 0, SEEK_END) != 0 || (bytes = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) {
        fprintf(stderr, "%s: cannot read %s\\n", argv[0], in_path);
        return 1;
    }
    if (bytes == 0 || bytes % (long)(NET_INPUT_SIZE * sizeof(float)) != 0) {
        fprintf(stderr, "%s: %s has %ld bytes, not a whole number of clips of %d float32 values\\n",
                argv[0], in_path, bytes, NET_INPUT_SIZE);
        fclose(f);
        return 1;
    }
    clips = (size_t)bytes / (NET_INPUT_SIZE * sizeof(float));
    input = malloc((size_t)bytes);
    logits = malloc(clips * NET_OUTPUT_SIZE * sizeof(float));
    /* exactly the planned arena (NET_SCRATCH_SHORTFALL, 0 unless defined, makes it smaller: a test
     * builds it with AddressSanitizer to show the plan needs every float it asks for) */
    scratch = malloc((NET_SCRATCH_FLOATS - NET_SCRATCH_SHORTFALL > 0 ? NET_SCRATCH_FLOATS - NET_SCRATCH_SHORTFALL : 1)
                     * sizeof(float));
    if (input == NULL || logits == NULL || scratch == NULL) {
        fprintf(stderr, "%s: out of memory\\n", argv[0]);
        return 1;
    }
    if (fread(input, sizeof(float), clips * NET_INPUT_SIZE, f) != clips * NET_INPUT_SIZE) {
        fprintf(stderr, "%s: short read from %s\\n", argv[0], in_path);
        return 1;
    }
    fclose(f);

    for (c = 0; c < clips; ++c)
        net_forward(input + c * NET_INPUT_SIZE, logits + c * NET_OUTPUT_SIZE, scratch);

    f = fopen(out_path, "wb");
    if (f == NULL || fwrite(logits, sizeof(float), clips * NET_OUTPUT_SIZE, f) != clips * NET_OUTPUT_SIZE
        || fclose(f) != 0) {
        fprintf(stderr, "%s: cannot write %s\\n", argv[0], out_path);
        return 1;
    }
    if (repeats > 0 && time_layers(input, logits, scratch, warmup, repeats, csv_path) != 0)
        return 1;
    free(input);
    free(logits);
    free(scratch);
    return 0;
}
""")

MAKEFILE = Template("""\
# Builds the exported network: make [CC=...] [CFLAGS="..."]
CC ?= cc
CFLAGS ?= -O2 -std=c99 -Wall -Werror
LDLIBS ?= -lm
SOURCES = $sources
HEADERS = $headers

net: $$(SOURCES) $$(HEADERS)
\t$$(CC) $$(CFLAGS) -o $$@ $$(SOURCES) $$(LDLIBS)

clean:
\trm -f net

.PHONY: clean
""")
