package phi4edge.demo

import android.graphics.Bitmap
import android.graphics.BitmapFactory
import android.graphics.Matrix
import android.media.ExifInterface
import java.io.File
import java.io.IOException
import phi4edge.engine.RgbImage

/** Photos as the engine takes them: upright, interleaved 8-bit RGB. */
object Photos {
    /**
     * Photos are decoded whole up to this long side, and at a power-of-two fraction above it (a
     * 48-megapixel photo at a quarter): the engine resizes every image to its crop grid anyway, and
     * a bitmap this size stays under 64 MB.
     */
    private const val MAX_LONG_SIDE = 4096

    /** Long side of the on-screen preview, so the full image need not be kept for display. */
    private const val PREVIEW_SIDE = 1024

    /**
     * Decodes [file] (JPEG, PNG, WebP, whatever BitmapFactory reads) and turns it upright by its
     * EXIF orientation. android.media.ExifInterface exists at every API level this app runs on;
     * its constructor taking a file path is the one API 23 has (stream constructors came in 24),
     * which is why pictures are copied into a file before decoding.
     */
    fun decode(file: File): Bitmap {
        val bounds = BitmapFactory.Options().apply { inJustDecodeBounds = true }
        BitmapFactory.decodeFile(file.path, bounds)
        if (bounds.outWidth <= 0 || bounds.outHeight <= 0) throw IOException("not an image Android can decode")
        var sample = 1
        while (maxOf(bounds.outWidth, bounds.outHeight) / sample > MAX_LONG_SIDE) sample *= 2
        val options = BitmapFactory.Options().apply {
            inSampleSize = sample
            inPreferredConfig = Bitmap.Config.ARGB_8888
        }
        val bitmap = BitmapFactory.decodeFile(file.path, options) ?: throw IOException("not an image Android can decode")
        return upright(bitmap, orientation(file))
    }

    private fun orientation(file: File): Int = try {
        ExifInterface(file.path).getAttributeInt(ExifInterface.TAG_ORIENTATION, ExifInterface.ORIENTATION_NORMAL)
    } catch (e: IOException) {
        ExifInterface.ORIENTATION_NORMAL   // no EXIF block (PNG, screenshots): already upright
    }

    /** Applies one of EXIF's eight orientations. */
    fun upright(bitmap: Bitmap, orientation: Int): Bitmap {
        val m = Matrix()
        when (orientation) {
            ExifInterface.ORIENTATION_FLIP_HORIZONTAL -> m.setScale(-1f, 1f)
            ExifInterface.ORIENTATION_ROTATE_180 -> m.setRotate(180f)
            ExifInterface.ORIENTATION_FLIP_VERTICAL -> m.setScale(1f, -1f)
            ExifInterface.ORIENTATION_TRANSPOSE -> { m.setRotate(90f); m.postScale(-1f, 1f) }
            ExifInterface.ORIENTATION_ROTATE_90 -> m.setRotate(90f)
            ExifInterface.ORIENTATION_TRANSVERSE -> { m.setRotate(-90f); m.postScale(-1f, 1f) }
            ExifInterface.ORIENTATION_ROTATE_270 -> m.setRotate(-90f)
            else -> return bitmap
        }
        val turned = Bitmap.createBitmap(bitmap, 0, 0, bitmap.width, bitmap.height, m, true)
        if (turned !== bitmap) bitmap.recycle()
        return turned
    }

    /** A copy for the screen, at most [PREVIEW_SIDE] on its long side. */
    fun preview(bitmap: Bitmap): Bitmap {
        val scale = PREVIEW_SIDE.toFloat() / maxOf(bitmap.width, bitmap.height)
        if (scale >= 1f) return bitmap
        return Bitmap.createScaledBitmap(bitmap, maxOf(1, (bitmap.width * scale).toInt()), maxOf(1, (bitmap.height * scale).toInt()), true)
    }

    /** ARGB pixels to the engine's interleaved RGB (alpha dropped), one row at a time. */
    fun toRgb(bitmap: Bitmap): RgbImage {
        val w = bitmap.width
        val h = bitmap.height
        val rgb = ByteArray(w * h * 3)
        val row = IntArray(w)
        var o = 0
        for (y in 0 until h) {
            bitmap.getPixels(row, 0, w, 0, y, w, 1)
            for (p in row) {
                rgb[o++] = (p shr 16).toByte()
                rgb[o++] = (p shr 8).toByte()
                rgb[o++] = p.toByte()
            }
        }
        return RgbImage(w, h, rgb)
    }
}

/** Recorded PCM16 as the engine takes audio: float samples in [-1, 1). */
fun pcm16ToFloat(samples: ShortArray, count: Int = samples.size): FloatArray =
    FloatArray(count) { samples[it] / 32768f }
