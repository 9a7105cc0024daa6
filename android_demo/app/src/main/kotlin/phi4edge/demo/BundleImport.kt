package phi4edge.demo

import android.content.ContentResolver
import android.net.Uri
import android.provider.DocumentsContract
import android.provider.DocumentsContract.Document
import java.io.File
import java.io.IOException

/**
 * Copies a folder the user picked (ACTION_OPEN_DOCUMENT_TREE: internal storage, an SD card, a USB
 * stick, a cloud drive) into the app's own storage. onnxruntime opens models by path, and a
 * document tree has no paths, so a picked bundle is copied once; `adb push` skips this step.
 */
class BundleImport(private val resolver: ContentResolver, private val onProgress: (copiedBytes: Long, totalBytes: Long) -> Unit) {
    private class Entry(val id: String, val name: String, val isDir: Boolean, val size: Long)

    private var copied = 0L
    private var total = 0L

    /** Replaces [dest] with the tree's contents; a failure leaves no half-copied bundle at [dest]. */
    fun copy(tree: Uri, dest: File) {
        val rootId = DocumentsContract.getTreeDocumentId(tree)
        total = sizeOf(tree, rootId)
        copied = 0
        val partial = File(dest.parentFile, dest.name + ".partial")
        partial.deleteRecursively()
        copyDir(tree, rootId, partial)
        val old = File(dest.parentFile, dest.name + ".old")
        old.deleteRecursively()
        if (dest.exists() && !dest.renameTo(old)) throw IOException("cannot replace $dest")
        if (!partial.renameTo(dest)) throw IOException("cannot rename $partial to $dest")
        old.deleteRecursively()
    }

    private fun children(tree: Uri, parentId: String): List<Entry> {
        val uri = DocumentsContract.buildChildDocumentsUriUsingTree(tree, parentId)
        val columns = arrayOf(Document.COLUMN_DOCUMENT_ID, Document.COLUMN_DISPLAY_NAME, Document.COLUMN_MIME_TYPE, Document.COLUMN_SIZE)
        val cursor = resolver.query(uri, columns, null, null, null) ?: throw IOException("cannot list $uri")
        return cursor.use {
            val out = ArrayList<Entry>()
            while (it.moveToNext()) {
                out += Entry(it.getString(0), it.getString(1), it.getString(2) == Document.MIME_TYPE_DIR, if (it.isNull(3)) 0 else it.getLong(3))
            }
            out
        }
    }

    private fun sizeOf(tree: Uri, dirId: String): Long =
        children(tree, dirId).sumOf { if (it.isDir) sizeOf(tree, it.id) else it.size }

    private fun copyDir(tree: Uri, dirId: String, dir: File) {
        if (!dir.mkdirs() && !dir.isDirectory) throw IOException("cannot create $dir")
        for (e in children(tree, dirId)) {
            // A name from a provider is not to be trusted as a path
            if (e.name.isEmpty() || e.name == "." || e.name == ".." || '/' in e.name) throw IOException("bad file name '${e.name}'")
            val target = File(dir, e.name)
            if (e.isDir) {
                copyDir(tree, e.id, target)
                continue
            }
            val input = resolver.openInputStream(DocumentsContract.buildDocumentUriUsingTree(tree, e.id))
                ?: throw IOException("cannot open ${e.name}")
            input.use { src ->
                target.outputStream().use { dst ->
                    val buf = ByteArray(1 shl 20)
                    var lastReport = 0L
                    while (true) {
                        val n = src.read(buf)
                        if (n < 0) break
                        dst.write(buf, 0, n)
                        copied += n
                        if (copied - lastReport >= 16L shl 20) {
                            lastReport = copied
                            onProgress(copied, total)
                        }
                    }
                }
            }
            onProgress(copied, total)
        }
    }
}
