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
     * Decodes [file] (JPEG, PNG, WebP: whatever BitmapFactory reads), shrunk so that its long side
     * is at most [maxSide], and turned upright by its EXIF orientation. android.media.ExifInterface
     * exists at every API level this app runs on, but reads a stream only from API 24 and the app
     * compiles against API 23: pictures are copied into a file first and EXIF is read by path.
     */
    fun decode(file: File, maxSide: Int): Bitmap {
        val bounds = BitmapFactory.Options().apply { inJustDecodeBounds = true }
        BitmapFactory.decodeFile(file.path, bounds)
        if (bounds.outWidth <= 0 || bounds.outHeight <= 0) throw IOException("not an image Android can decode")
        var sample = 1   // the decoder's cheap power-of-two shrink, staying at or above maxSide
        while (maxOf(bounds.outWidth, bounds.outHeight) / (sample * 2) >= maxSide) sample *= 2
        val options = BitmapFactory.Options().apply {
            inSampleSize = sample
            inPreferredConfig = Bitmap.Config.ARGB_8888
        }
        var bitmap = BitmapFactory.decodeFile(file.path, options) ?: throw IOException("not an image Android can decode")
        val long = maxOf(bitmap.width, bitmap.height)
        if (long > maxSide) {   // then bilinear down to maxSide exactly
            val scaled = Bitmap.createScaledBitmap(bitmap, maxOf(1, bitmap.width * maxSide / long), maxOf(1, bitmap.height * maxSide / long), true)
            if (scaled !== bitmap) bitmap.recycle()
            bitmap = scaled
        }
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
