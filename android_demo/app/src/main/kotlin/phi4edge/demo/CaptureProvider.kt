package phi4edge.demo

import android.content.ContentProvider
import android.content.ContentValues
import android.content.Context
import android.database.Cursor
import android.database.MatrixCursor
import android.net.Uri
import android.os.ParcelFileDescriptor
import android.provider.OpenableColumns
import java.io.File

/**
 * The one file a camera app may write into: `content://phi4edge.demo.capture/photo.jpg`, backed by
 * cache/capture.jpg. ACTION_IMAGE_CAPTURE returns only a thumbnail unless given such a URI, and
 * since Android 7 a file:// URI may not be handed out; this is AndroidX's FileProvider cut down to
 * one file, so the app needs no AndroidX. Not exported; the camera gets a one-off write grant.
 */
class CaptureProvider : ContentProvider() {
    companion object {
        const val AUTHORITY = "phi4edge.demo.capture"
        private const val NAME = "photo.jpg"
        val URI: Uri = Uri.parse("content://$AUTHORITY/$NAME")

        fun file(context: Context) = File(context.cacheDir, "capture.jpg")
    }

    override fun onCreate() = true

    private fun fileFor(uri: Uri): File {
        if (uri.pathSegments != listOf(NAME)) throw IllegalArgumentException("no such file: $uri")
        return file(context!!)
    }

    override fun openFile(uri: Uri, mode: String): ParcelFileDescriptor =
        ParcelFileDescriptor.open(fileFor(uri), ParcelFileDescriptor.parseMode(mode))

    override fun getType(uri: Uri) = "image/jpeg"

    /** Some camera apps ask for the name and size before writing. */
    override fun query(uri: Uri, projection: Array<String>?, selection: String?, selectionArgs: Array<String>?, sortOrder: String?): Cursor {
        val file = fileFor(uri)
        val columns = projection ?: arrayOf(OpenableColumns.DISPLAY_NAME, OpenableColumns.SIZE)
        val row = columns.map<String, Any?> { if (it == OpenableColumns.SIZE) file.length() else if (it == OpenableColumns.DISPLAY_NAME) NAME else null }
        return MatrixCursor(columns, 1).apply { addRow(row.toTypedArray()) }
    }

    override fun insert(uri: Uri, values: ContentValues?): Uri? = null
    override fun update(uri: Uri, values: ContentValues?, selection: String?, selectionArgs: Array<String>?) = 0
    override fun delete(uri: Uri, selection: String?, selectionArgs: Array<String>?) = 0
}
