package phi4edge.engine

import java.math.BigDecimal
import java.math.RoundingMode
import kotlin.math.abs
import kotlin.math.ceil
import kotlin.math.floor

/*
 * Image preprocessing for Phi-4-multimodal: a port of runtime/image.py (the reference; its outputs
 * are the test vectors, android_demo/engine/vectors/preprocess_vectors.py). The dynamic-HD crop
 * grid, the resize (Pillow's BILINEAR, bit for bit), white padding, normalisation, patch masks,
 * the bicubic global image and the token count. Plain Kotlin: no Android or java.awt classes, so
 * the same source runs in the app and on the desktop JVM. Decoding is the caller's (Android:
 * BitmapFactory, after checkImagePixels on the header size from inJustDecodeBounds).
 */

/** Largest image taken, as runtime/image.py's MAX_PIXELS: 64 megapixels. */
const val MAX_IMAGE_PIXELS = 64_000_000L

/** Interleaved 8-bit RGB, row-major, `width * height * 3` bytes (alpha already composited). */
class RgbImage(val width: Int, val height: Int, val rgb: ByteArray) {
    init {
        require(width > 0 && height > 0) { "image of ${width}x$height pixels is empty" }
        require(rgb.size.toLong() == width.toLong() * height * 3) {
            "image of ${width}x$height pixels needs ${width.toLong() * height * 3} RGB bytes, got ${rgb.size}"
        }
    }
}

/** Vision settings: crop_size and patch_size from the bundle's vision.config, dynamic_hd from vision. */
data class ImageSettings(
    val cropSize: Int = 448,
    val patchSize: Int = 14,
    val dynamicHd: Int = 36,
    val mean: Float = 0.5f,
    val std: Float = 0.5f,
) {
    init {
        require(cropSize > 0 && patchSize in 1..cropSize && dynamicHd > 0) {
            "invalid image settings: crop $cropSize, patch $patchSize, dynamic_hd $dynamicHd"
        }
    }

    /** Patches per crop side. */
    val maskSize: Int get() = cropSize / patchSize
}

/**
 * One image ready for the vision graph.
 *
 * @property pixelValues [cropCount, 3, crop, crop] float32: the bicubic global image first, then the
 *   HD crops row by row; (v / 255 - mean) / std.
 * @property cropCount images in [pixelValues], the global one included: 1 + rows * cols.
 * @property patchMask [cropCount, mask, mask]: true for patches that hold image, false for padding.
 * @property rows crop grid rows; [cols] crop grid columns.
 * @property numTokens placeholder tokens the image takes in the prompt.
 */
class PreparedImage(
    val pixelValues: FloatArray,
    val cropCount: Int,
    val patchMask: BooleanArray,
    val rows: Int,
    val cols: Int,
    val numTokens: Int,
) {
    init {
        require(cropCount == 1 + rows * cols) { "$cropCount crops for a ${cols}x$rows grid" }
    }
}

/**
 * Refuse an image larger than [MAX_IMAGE_PIXELS] with runtime/image.py's message; call it on the size
 * read from the header, before decoding. [preprocessImage] calls it too.
 */
fun checkImagePixels(width: Int, height: Int, name: String = "<image>") {
    val pixels = width.toLong() * height
    if (pixels > MAX_IMAGE_PIXELS) {
        throw IllegalArgumentException("$name: ${width}x$height is ${formatFixed(pixels / 1e6, 0)} megapixels; " +
            "phi4edge takes at most ${formatFixed(MAX_IMAGE_PIXELS / 1e6, 0)} (downscale it first)")
    }
}

/** Python's f"{x:.{digits}f}": the exact binary value rounded half-even (Java's %f rounds differently). */
internal fun formatFixed(x: Double, digits: Int): String =
    BigDecimal(x).setScale(digits, RoundingMode.HALF_EVEN).toPlainString()

/**
 * (columns, rows) of crops: enough to cover the image, or the closest aspect ratio allowed, ties to
 * the larger grid when the image is big enough to use it (runtime/image.py's crop_grid).
 */
fun cropGrid(width: Int, height: Int, s: ImageSettings): Pair<Int, Int> {
    val cols = ceil(width.toDouble() / s.cropSize).toInt()
    val rows = ceil(height.toDouble() / s.cropSize).toInt()
    if (cols.toLong() * rows <= s.dynamicHd) return Pair(cols, rows)
    val aspect = width.toDouble() / height
    val area = width.toLong().toDouble() * height
    var best = Pair(1, 1)
    var bestDiff = Double.POSITIVE_INFINITY
    // Python sorts the (i, j) with i * j <= dynamic_hd by i * j; the order within one product never
    // matters: two ratios of one product tie only at their midpoint, and a ratio of a smaller
    // product (i1/j2) lies strictly between them, closer.
    for (product in 1..s.dynamicHd) {
        for (i in 1..product) {
            if (product % i != 0) continue
            val j = product / i
            val diff = abs(aspect - i.toDouble() / j)
            if (diff < bestDiff) {
                best = Pair(i, j); bestDiff = diff
            } else if (diff == bestDiff && area > 0.5 * s.cropSize.toDouble() * s.cropSize * i * j) {
                best = Pair(i, j)
            }
        }
    }
    return best
}

/** The Python runtime's preprocess(load_image(...)) for an already decoded RGB image. */
fun preprocessImage(image: RgbImage, s: ImageSettings = ImageSettings(), name: String = "<image>"): PreparedImage {
    val width = image.width
    val height = image.height
    checkImagePixels(width, height, name)
    val (cols, rows) = cropGrid(width, height, s)
    val c = s.cropSize
    val targetW = c.toLong() * cols
    val targetH = c.toLong() * rows
    require((1L + rows * cols) * 3 * c * c < Int.MAX_VALUE) { "a ${cols}x$rows grid of $c-pixel crops is too large" }
    val newW: Int
    val newH: Int
    if (targetW.toDouble() / width < targetH.toDouble() / height) {
        newW = targetW.toInt(); newH = ((height.toLong() * targetW).toDouble() / width).toInt()
    } else {
        newW = ((width.toLong() * targetH).toDouble() / height).toInt(); newH = targetH.toInt()
    }
    if (minOf(newW, newH) < 10) {
        throw IllegalArgumentException("image of ${width}x$height is too extreme an aspect ratio: it would be " +
            "${newW}x$newH pixels inside a ${cols}x$rows crop grid")
    }
    val resized = resizeBilinear(image.rgb, width, height, newW, newH)
    val tw = targetW.toInt()
    val th = targetH.toInt()

    // normalised value of each 8-bit level, in float32 as numpy computes it
    val level = FloatArray(256) { (it.toFloat() / 255f - s.mean) / s.std }
    val white = level[255]
    val crops = rows * cols
    val plane = c * c
    val pixels = FloatArray((1 + crops) * 3 * plane)
    // HD crops: the resized image at the top left of a white canvas of the grid's size
    for (r in 0 until rows) for (q in 0 until cols) {
        val base = (1 + r * cols + q) * 3 * plane
        val x0 = q * c
        val inside = (newW - x0).coerceIn(0, c)   // columns of this crop that hold image
        for (y in 0 until c) {
            val yy = r * c + y
            for (ch in 0 until 3) {
                val o = base + ch * plane + y * c
                if (yy < newH) {
                    var p = (yy * newW + x0) * 3 + ch
                    for (x in 0 until inside) { pixels[o + x] = level[resized[p].toInt() and 0xFF]; p += 3 }
                    if (inside < c) pixels.fill(white, o + inside, o + c)
                } else {
                    pixels.fill(white, o, o + c)
                }
            }
        }
    }
    globalImage(resized, newW, newH, tw, th, c, level, pixels)

    // patch mask of the whole grid: the padding's full patches (right columns, bottom rows) are off
    val m = s.maskSize
    val padCols = if (tw - newW >= s.patchSize) (tw - newW) / s.patchSize else 0
    val padRows = if (th - newH >= s.patchSize) (th - newH) / s.patchSize else 0
    val validCols = m * cols - padCols
    val validRows = m * rows - padRows
    val mask = BooleanArray((1 + crops) * m * m)
    mask.fill(true, 0, m * m)
    for (r in 0 until rows) for (q in 0 until cols) {
        val base = (1 + r * cols + q) * m * m
        for (i in 0 until m) for (j in 0 until m) {
            mask[base + i * m + j] = r * m + i < validRows && q * m + j < validCols
        }
    }
    // tokens: the global image's features with a separator per row, one separator between, and the
    // useful (unpadded) area of the sub-images, pooled 2x2, with a separator per row
    val vr = maxOf(validRows, 0)
    val vc = maxOf(validCols, 0)
    val usefulRows = if (vc > 0) (vr + 1) / 2 else 0   // even rows 0, 2, ... that hold image
    val usefulCols = if (vr > 0) (vc + 1) / 2 else 0
    val side = (m + 1) / 2
    val numTokens = side * (side + 1) + 1 + usefulRows * (usefulCols + 1)
    return PreparedImage(pixels, 1 + crops, mask, rows, cols, numTokens)
}

/**
 * The global image: the normalised canvas (resized image, white padding, [th] x [tw]) resized to
 * [c] x [c] with PyTorch's bicubic (a = -0.75, half-pixel centres, edges clamped, no antialias),
 * in double as runtime/image.py's resize_bicubic: along the height first, then the width. Written
 * into the first [3, c, c] of [out], one output row at a time (no canvas-sized buffer).
 */
private fun globalImage(resized: ByteArray, newW: Int, newH: Int, tw: Int, th: Int, c: Int,
                        level: FloatArray, out: FloatArray) {
    val rowTaps = CubicTaps(th, c)
    val colTaps = CubicTaps(tw, c)
    val levelD = DoubleArray(256) { level[it].toDouble() }
    val white = levelD[255]
    val line = DoubleArray(tw)
    for (ch in 0 until 3) {
        for (oy in 0 until c) {
            line.fill(0.0)
            for (t in 0 until rowTaps.count[oy]) {
                val y = rowTaps.index[oy * 4 + t]
                val w = rowTaps.weight[oy * 4 + t]
                if (y < newH) {
                    var p = y * newW * 3 + ch
                    for (x in 0 until newW) { line[x] += w * levelD[resized[p].toInt() and 0xFF]; p += 3 }
                    val wv = w * white
                    for (x in newW until tw) line[x] += wv
                } else {
                    val wv = w * white
                    for (x in 0 until tw) line[x] += wv
                }
            }
            val o = ch * c * c + oy * c
            for (ox in 0 until c) {
                var acc = 0.0
                for (t in 0 until colTaps.count[ox]) acc += colTaps.weight[ox * 4 + t] * line[colTaps.index[ox * 4 + t]]
                out[o + ox] = acc.toFloat()
            }
        }
    }
}

/** Up to 4 (index, weight) taps per output of a bicubic resize, clamped indices merged as np.add.at does. */
private class CubicTaps(inSize: Int, outSize: Int) {
    val index = IntArray(outSize * 4)
    val weight = DoubleArray(outSize * 4)
    val count = IntArray(outSize)

    init {
        val a = -0.75
        val scale = inSize.toDouble() / outSize
        for (o in 0 until outSize) {
            val x = (o + 0.5) * scale - 0.5
            val base = floor(x)
            val t = x - base
            val w = doubleArrayOf(
                ((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a,
                ((a + 2) * t - (a + 3)) * t * t + 1,
                ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1,
                ((a * (2 - t) - 5 * a) * (2 - t) + 8 * a) * (2 - t) - 4 * a)
            var n = 0
            for (k in 0 until 4) {
                val i = (base.toInt() - 1 + k).coerceIn(0, inSize - 1)
                val same = (0 until n).firstOrNull { index[o * 4 + it] == i }
                if (same != null) {
                    weight[o * 4 + same] += w[k]
                } else {
                    index[o * 4 + n] = i; weight[o * 4 + n] = w[k]; n++
                }
            }
            count[o] = n
        }
    }
}

// --- Pillow's Image.resize(size, Image.Resampling.BILINEAR) ----------------------------------------
//
// Pillow's ImagingResample (src/libImaging/Resample.c) for 8-bit images, reproduced for the pinned
// Pillow 13.0.0: a separable triangle filter whose support grows with the downscale factor (so it
// antialiases when shrinking), coefficients normalised to sum 1 in double, then rounded to 22-bit
// fixed point. Two passes, each into 8 bits: horizontal first (only over the rows the vertical
// pass reads), then vertical; but vertical first when the height shrinks by more than twice as
// many pixels as the width does. A pass runs only when its side changes size; an image of the
// same size is copied. Sums start at 1 << 21 (rounding) and clip to 0..255 after >> 22.

private const val PRECISION_BITS = 22

/** Pillow's precompute_coeffs + normalize_coeffs_8bpc for the bilinear filter and a whole-image box. */
private class ResampleCoeffs(inSize: Int, outSize: Int) {
    val ksize: Int
    val bounds = IntArray(outSize * 2)   // first input index, taps
    val k: IntArray                      // [outSize, ksize] fixed point

    init {
        val scale = inSize.toFloat().toDouble() / outSize   // (double)(in1 - in0) / outSize, box in float
        val filterscale = if (scale < 1.0) 1.0 else scale
        val support = 1.0 * filterscale                       // bilinear support 1.0
        ksize = ceil(support).toInt() * 2 + 1
        require(outSize.toLong() * ksize < Int.MAX_VALUE) { "resize to $outSize pixels is too large" }
        val kk = DoubleArray(ksize)
        k = IntArray(outSize * ksize)
        val invFilterscale = 1.0 / filterscale
        for (xx in 0 until outSize) {
            val center = 0.0 + (xx + 0.5) * scale
            var ww = 0.0
            val xmin = maxOf((center - support + 0.5).toInt(), 0)
            val xmax = minOf((center + support + 0.5).toInt(), inSize) - xmin
            for (x in 0 until xmax) {
                var d = ((x + xmin).toDouble() - center + 0.5) * invFilterscale
                if (d < 0.0) d = -d
                val w = if (d < 1.0) 1.0 - d else 0.0
                kk[x] = w
                ww += w
            }
            for (x in 0 until xmax) {
                val w = if (ww != 0.0) kk[x] / ww else kk[x]
                k[xx * ksize + x] = if (w < 0) (-0.5 + w * (1 shl PRECISION_BITS)).toInt()
                                    else (0.5 + w * (1 shl PRECISION_BITS)).toInt()
            }
            bounds[xx * 2] = xmin
            bounds[xx * 2 + 1] = maxOf(xmax, 0)
        }
    }
}

private fun clip8(sum: Int): Byte {
    val v = sum shr PRECISION_BITS
    return (if (v < 0) 0 else if (v > 255) 255 else v).toByte()
}

/** RGB bytes [inH, inW, 3] resized to [outH, outW, 3] as Pillow's BILINEAR resize. */
internal fun resizeBilinear(src: ByteArray, inW: Int, inH: Int, outW: Int, outH: Int): ByteArray {
    if (inW == outW && inH == outH) return src.copyOf()
    val needH = outW != inW
    val needV = outH != inH
    // Pillow 13: when the height shrinks by more than twice what the width does, the vertical pass
    // runs first (different 8-bit rounding in between, so the order matters)
    val verticalFirst = inH - outH > 0 && inH.toLong() - outH > (inW.toLong() - outW) * 2
    if (verticalFirst) {
        val rows = verticalPass(src, inW, ResampleCoeffs(inH, outH), 0, outH)
        return if (needH) horizontalPass(rows, inW, 0, outH, ResampleCoeffs(inW, outW), outW) else rows
    }
    if (!needV) return horizontalPass(src, inW, 0, inH, ResampleCoeffs(inW, outW), outW)
    val vert = ResampleCoeffs(inH, outH)
    if (!needH) return verticalPass(src, inW, vert, 0, outH)
    // horizontal pass over only the rows the vertical pass reads
    val yFirst = vert.bounds[0]
    val yLast = vert.bounds[outH * 2 - 2] + vert.bounds[outH * 2 - 1]
    val tmp = horizontalPass(src, inW, yFirst, yLast - yFirst, ResampleCoeffs(inW, outW), outW)
    return verticalPass(tmp, outW, vert, yFirst, outH)
}

/** Pillow's _ImagingResampleHorizontal_8bpc on RGB: [rows] rows from row [yFirst] of [src] ([inW] wide). */
private fun horizontalPass(src: ByteArray, inW: Int, yFirst: Int, rows: Int, c: ResampleCoeffs, outW: Int): ByteArray {
    val out = ByteArray(outW * rows * 3)
    val ks = c.ksize
    val hk = c.k
    val hb = c.bounds
    val half = 1 shl (PRECISION_BITS - 1)
    for (yy in 0 until rows) {
        val rowIn = (yy + yFirst) * inW * 3
        var o = yy * outW * 3
        for (xx in 0 until outW) {
            val xmin = hb[xx * 2]
            val n = hb[xx * 2 + 1]
            val kOff = xx * ks
            var s0 = half
            var s1 = half
            var s2 = half
            var p = rowIn + xmin * 3
            for (x in 0 until n) {
                val kv = hk[kOff + x]
                s0 += (src[p].toInt() and 0xFF) * kv
                s1 += (src[p + 1].toInt() and 0xFF) * kv
                s2 += (src[p + 2].toInt() and 0xFF) * kv
                p += 3
            }
            out[o] = clip8(s0); out[o + 1] = clip8(s1); out[o + 2] = clip8(s2)
            o += 3
        }
    }
    return out
}

/**
 * Pillow's _ImagingResampleVertical_8bpc on RGB rows [w] wide; [src] starts at input row [yShift]
 * (the rows a horizontal pass kept). Each output row is accumulated a whole input row at a time.
 */
private fun verticalPass(src: ByteArray, w: Int, c: ResampleCoeffs, yShift: Int, outH: Int): ByteArray {
    val rowLen = w * 3
    val out = ByteArray(rowLen * outH)
    val acc = IntArray(rowLen)
    val ks = c.ksize
    val vk = c.k
    val half = 1 shl (PRECISION_BITS - 1)
    for (yy in 0 until outH) {
        val ymin = c.bounds[yy * 2] - yShift
        val n = c.bounds[yy * 2 + 1]
        acc.fill(half)
        for (y in 0 until n) {
            val kv = vk[yy * ks + y]
            val rowIn = (y + ymin) * rowLen
            for (i in 0 until rowLen) acc[i] += (src[rowIn + i].toInt() and 0xFF) * kv
        }
        val o = yy * rowLen
        for (i in 0 until rowLen) out[o + i] = clip8(acc[i])
    }
    return out
}
