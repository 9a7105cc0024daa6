package phi4edge.demo

import android.Manifest
import android.app.Activity
import android.content.ActivityNotFoundException
import android.content.Intent
import android.content.pm.PackageManager
import android.graphics.Bitmap
import android.net.Uri
import android.os.Bundle
import android.os.Handler
import android.os.Looper
import android.provider.MediaStore
import android.provider.OpenableColumns
import android.util.Log
import android.view.View
import android.view.WindowManager
import android.view.inputmethod.InputMethodManager
import android.widget.Button
import android.widget.EditText
import android.widget.ImageView
import android.widget.ScrollView
import android.widget.Spinner
import android.widget.TextView
import android.widget.Toast
import com.google.gson.JsonParser
import java.io.File
import java.io.IOException
import java.util.Locale
import java.util.concurrent.ExecutorService
import java.util.concurrent.Executors
import phi4edge.engine.BundleException
import phi4edge.engine.Engine
import phi4edge.engine.EngineOptions
import phi4edge.engine.Request
import phi4edge.engine.Wav

/**
 * The whole app: load a bundle, attach a photo and/or audio, type a prompt, stream the answer.
 *
 * Threads: the UI thread owns the views and the fields below; [engineThread] owns [engine] and runs
 * everything that touches the model or the bundle folder (open, generate, import, close) in order;
 * [mediaThread] decodes pictures and sounds, so a photo can be picked while an answer streams.
 */
class MainActivity : Activity() {
    private companion object {
        const val TAG = "phi4edge"
        const val PICK_PHOTO = 1
        const val TAKE_PHOTO = 2
        const val PICK_AUDIO = 3
        const val IMPORT_BUNDLE = 4
        const val MIC_PERMISSION = 5
        const val MAX_WAV_BYTES = 64 shl 20
        const val PREVIEW_SIDE = 1024
        /** Long sides for the choices of R.array.image_sizes; 4096 keeps a full-size bitmap under 64 MB. */
        val IMAGE_SIDES = intArrayOf(448, 896, 4096)
    }

    private enum class Busy { IDLE, LOADING, IMPORTING, GENERATING }

    /** Thrown from the token callback to end a generation early. */
    private class Stopped : RuntimeException("stopped")

    private val engineThread: ExecutorService = Executors.newSingleThreadExecutor { Thread(it, "phi4edge-engine") }
    private val mediaThread: ExecutorService = Executors.newSingleThreadExecutor { Thread(it, "phi4edge-media") }
    private val ui = Handler(Looper.getMainLooper())

    private var engine: Engine? = null                  // engineThread only
    @Volatile private var stopRequested = false

    private var busy = Busy.IDLE
    private var imageFile: File? = null                 // a copy in cache/, decoded at Generate
    private var imageCount = 0
    private var audio: FloatArray? = null
    private var recorder: Recorder? = null
    private lateinit var bundleDir: File

    private lateinit var bundleStatus: TextView
    private lateinit var loadButton: Button
    private lateinit var importButton: Button
    private lateinit var imageStatus: TextView
    private lateinit var imagePreview: ImageView
    private lateinit var imageSize: Spinner
    private lateinit var audioStatus: TextView
    private lateinit var recordButton: Button
    private lateinit var prompt: EditText
    private lateinit var maxTokens: EditText
    private lateinit var generateButton: Button
    private lateinit var answer: TextView
    private lateinit var stats: TextView
    private lateinit var scroll: ScrollView

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContentView(R.layout.activity_main)
        // /sdcard/Android/data/phi4edge.demo/files/bundle: `adb push` can write there, and the app
        // needs no storage permission to read it. Internal storage if there is no shared storage.
        bundleDir = File(getExternalFilesDir(null) ?: filesDir, "bundle")
        cacheDir.listFiles()?.forEach { if (it.name.startsWith("image-")) it.delete() }   // from a past run

        bundleStatus = view<TextView>(R.id.bundle_status)
        loadButton = view<Button>(R.id.load_bundle)
        importButton = view<Button>(R.id.import_bundle)
        imageStatus = view<TextView>(R.id.image_status)
        imagePreview = view<ImageView>(R.id.image_preview)
        imageSize = view<Spinner>(R.id.image_size)
        imageSize.setSelection(1)
        audioStatus = view<TextView>(R.id.audio_status)
        recordButton = view<Button>(R.id.record)
        prompt = view<EditText>(R.id.prompt)
        maxTokens = view<EditText>(R.id.max_tokens)
        generateButton = view<Button>(R.id.generate)
        answer = view<TextView>(R.id.answer)
        stats = view<TextView>(R.id.stats)
        scroll = view<ScrollView>(R.id.scroll)

        loadButton.setOnClickListener { loadBundle() }
        importButton.setOnClickListener { launch(Intent(Intent.ACTION_OPEN_DOCUMENT_TREE), IMPORT_BUNDLE) }
        view<View>(R.id.pick_photo).setOnClickListener {
            launch(Intent(Intent.ACTION_GET_CONTENT).setType("image/*").addCategory(Intent.CATEGORY_OPENABLE), PICK_PHOTO)
        }
        view<View>(R.id.take_photo).setOnClickListener { takePhoto() }
        view<View>(R.id.clear_image).setOnClickListener { setImage(null, null, getString(R.string.no_image)) }
        view<View>(R.id.pick_audio).setOnClickListener {
            val intent = Intent(Intent.ACTION_GET_CONTENT).setType("audio/*").addCategory(Intent.CATEGORY_OPENABLE)
                .putExtra(Intent.EXTRA_MIME_TYPES, arrayOf("audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave"))
            launch(intent, PICK_AUDIO)
        }
        recordButton.setOnClickListener { toggleRecording() }
        view<View>(R.id.clear_audio).setOnClickListener { setAudio(null, getString(R.string.no_audio)) }
        generateButton.setOnClickListener { if (busy == Busy.GENERATING) stopRequested = true else generate() }

        bundleStatus.text = "Bundle folder: ${bundleDir.path}"
        if (File(bundleDir, "manifest.json").isFile) loadBundle()
        refreshButtons()
    }

    override fun onDestroy() {
        stopRequested = true
        recorder?.let { if (it.isRecording) it.stop() }
        engineThread.execute { engine?.close(); engine = null }
        engineThread.shutdown()
        mediaThread.shutdown()
        super.onDestroy()
    }

    // ---- bundle ----

    private fun loadBundle() {
        if (!File(bundleDir, "manifest.json").isFile) {
            bundleStatus.text = "No bundle at ${bundleDir.path}\n" +
                "Push one with adb (see the README) or import a folder."
            return
        }
        setBusy(Busy.LOADING)
        bundleStatus.text = "Loading ${bundleDir.path} …"
        engineThread.execute {
            engine?.close()
            engine = null
            val t0 = System.nanoTime()
            val message = try {
                val e = Engine.open(bundleDir, EngineOptions())
                engine = e
                val adapters = if (e.adapterNames.isEmpty()) "none" else e.adapterNames.joinToString(", ")
                "${describe(bundleDir) ?: e.modelName}\nadapters: $adapters\nloaded in ${fmt(seconds(t0), 1)} s from ${bundleDir.path}"
            } catch (e: BundleException) {
                "Bundle not usable: ${e.message}"
            } catch (e: Throwable) {   // OrtException, UnsatisfiedLinkError, OutOfMemoryError: say so, don't crash
                Log.e(TAG, "loading ${bundleDir.path}", e)
                "Could not load the bundle: $e"
            }
            ui.post { bundleStatus.text = message; setBusy(Busy.IDLE) }
        }
    }

    /**
     * "Phi-4-multimodal-instruct, int4" from manifest.json's model.source and quantization.precision
     * (docs/bundle-format.md). The engine's modelName is the folder's name, always "bundle" here.
     */
    private fun describe(dir: File): String? = try {
        val m = JsonParser.parseString(File(dir, "manifest.json").readText()).asJsonObject
        val source = m.getAsJsonObject("model")?.get("source")?.takeIf { it.isJsonPrimitive }?.asString
        val precision = m.getAsJsonObject("quantization")?.get("precision")?.takeIf { it.isJsonPrimitive }?.asString
        source?.let { if (precision != null) "$it, $precision" else it }
    } catch (e: RuntimeException) {   // the engine has already checked the manifest; this is only a title
        null
    }

    private fun importBundle(tree: Uri) {
        setBusy(Busy.IMPORTING)
        bundleStatus.text = "Importing into ${bundleDir.path} …"
        engineThread.execute {
            engine?.close()   // the old bundle's files are about to be replaced
            engine = null
            val message = try {
                BundleImport(contentResolver) { done, total ->
                    ui.post { bundleStatus.text = "Importing: ${mb(done)} of ${mb(total)} MB" }
                }.copy(tree, bundleDir)
                null
            } catch (e: Exception) {
                Log.e(TAG, "import", e)
                "Import failed: $e"
            }
            ui.post {
                setBusy(Busy.IDLE)
                if (message == null) loadBundle() else bundleStatus.text = message
            }
        }
    }

    // ---- image ----

    private fun takePhoto() {
        CaptureProvider.file(this).delete()
        val intent = Intent(MediaStore.ACTION_IMAGE_CAPTURE)
            .putExtra(MediaStore.EXTRA_OUTPUT, CaptureProvider.URI)
            .addFlags(Intent.FLAG_GRANT_WRITE_URI_PERMISSION or Intent.FLAG_GRANT_READ_URI_PERMISSION)
        launch(intent, TAKE_PHOTO)
    }

    /**
     * Copies the picture into the cache (or takes the camera's file), and shows a preview; the
     * engine gets it decoded at the size chosen when Generate is tapped. [source] is a content URI,
     * or null for the camera's photo.
     */
    private fun loadImage(source: Uri?) {
        imageStatus.text = "Decoding …"
        val file = File(cacheDir, "image-${++imageCount}")
        mediaThread.execute {
            try {
                if (source == null) {
                    if (!CaptureProvider.file(this).renameTo(file)) throw IOException("the camera app saved no photo")
                } else {
                    copyTo(source, file)
                }
                val preview = Photos.decode(file, PREVIEW_SIDE)
                val name = if (source == null) "Camera photo" else displayName(source)
                ui.post { setImage(file, preview, name) }
            } catch (e: Exception) {
                Log.e(TAG, "image", e)
                file.delete()
                ui.post { setImage(null, null, "Could not read the image: ${e.message}") }
            }
        }
    }

    private fun setImage(file: File?, preview: Bitmap?, status: String) {
        val old = imageFile
        imageFile = file
        // deleted in turn on the engine thread, which may be decoding it for a generation now
        if (old != null && old != file && !engineThread.isShutdown) engineThread.execute { old.delete() }
        imageStatus.text = status
        imagePreview.setImageBitmap(preview)
        imagePreview.visibility = if (preview == null) View.GONE else View.VISIBLE
    }

    // ---- audio ----

    private fun loadWav(source: Uri) {
        audioStatus.text = "Reading …"
        mediaThread.execute {
            try {
                val name = displayName(source)
                val bytes = readBytes(source, MAX_WAV_BYTES)
                val samples = Wav.read(bytes, name)
                ui.post { setAudio(samples, "$name: ${fmt(samples.size / 16000.0, 1)} s") }
            } catch (e: Exception) {   // BundleException-style messages from Wav.read name the problem
                Log.e(TAG, "audio", e)
                ui.post { setAudio(null, "Could not read the audio: ${e.message}") }
            }
        }
    }

    private fun toggleRecording() {
        val r = recorder
        if (r != null && r.isRecording) {
            finishRecording()
            return
        }
        if (checkSelfPermission(Manifest.permission.RECORD_AUDIO) != PackageManager.PERMISSION_GRANTED) {
            requestPermissions(arrayOf(Manifest.permission.RECORD_AUDIO), MIC_PERMISSION)
            return
        }
        val fresh = Recorder { seconds ->
            ui.post {
                val current = recorder ?: return@post
                if (current.isRecording) audioStatus.text = "Recording: ${fmt(seconds, 1)} s"
                else finishRecording()   // reached the length limit by itself
            }
        }
        try {
            fresh.start()
        } catch (e: IllegalStateException) {
            audioStatus.text = e.message
            return
        }
        recorder = fresh
        recordButton.setText(R.string.stop_recording)
        audioStatus.text = "Recording …"
    }

    private fun finishRecording() {
        val r = recorder ?: return
        recorder = null
        recordButton.setText(R.string.record)
        val samples = r.stop()
        if (samples.isEmpty()) setAudio(null, "Nothing was recorded")
        else setAudio(samples, "Recording: ${fmt(samples.size / Recorder.SAMPLE_RATE.toDouble(), 1)} s at 16 kHz")
    }

    override fun onRequestPermissionsResult(requestCode: Int, permissions: Array<out String>, grantResults: IntArray) {
        if (requestCode != MIC_PERMISSION) return
        if (grantResults.isNotEmpty() && grantResults[0] == PackageManager.PERMISSION_GRANTED) toggleRecording()
        else audioStatus.text = "Recording needs the microphone permission"
    }

    private fun setAudio(samples: FloatArray?, status: String) {
        audio = samples
        audioStatus.text = status
    }

    // ---- generation ----

    private fun generate() {
        val text = prompt.text.toString().trim()
        if (text.isEmpty()) {
            toast("Type a prompt first")
            return
        }
        val limit = maxTokens.text.toString().toIntOrNull()?.coerceIn(1, 4096) ?: 256
        val photo = imageFile
        val side = IMAGE_SIDES[imageSize.selectedItemPosition]
        val sound = audio
        (getSystemService(INPUT_METHOD_SERVICE) as InputMethodManager).hideSoftInputFromWindow(prompt.windowToken, 0)
        answer.text = ""
        stats.text = "Prefilling …"
        stopRequested = false
        setBusy(Busy.GENERATING)
        engineThread.execute {
            val e = engine
            if (e == null) {
                ui.post { stats.text = "Load a bundle first"; setBusy(Busy.IDLE) }
                return@execute
            }
            val t0 = System.nanoTime()
            var firstToken = 0L
            var tokens = 0
            var imageNote = ""
            val summary = try {
                val rgb = photo?.let { f ->
                    val bitmap = Photos.decode(f, side)
                    Photos.toRgb(bitmap).also { bitmap.recycle(); imageNote = " · image ${it.width}×${it.height}" }
                }
                val request = Request(prompt = text, image = rgb, audio = sound, maxNewTokens = limit)
                val result = e.generate(request) { step ->
                    if (stopRequested) throw Stopped()
                    if (tokens++ == 0) {
                        firstToken = System.nanoTime()
                        ui.post { stats.text = "Generating …" }
                    }
                    ui.post { answer.append(step.text); scroll.post { scroll.fullScroll(View.FOCUS_DOWN) } }
                }
                ui.post { answer.text = result.text }
                "adapter: ${result.adapter ?: "none (base model)"}\n" +
                    "${fmt(result.decodeTokensPerSecond, 1)} tokens/s · ${result.tokenIds.size} tokens · " +
                    "prompt ${result.promptTokens} tokens, prefill ${fmt(result.prefillSeconds, 2)} s · " +
                    "finish: ${result.finishReason} · ${fmt(seconds(t0), 1)} s in all$imageNote"
            } catch (s: Stopped) {
                val rate = if (tokens > 1) (tokens - 1) / ((System.nanoTime() - firstToken) / 1e9) else 0.0
                "stopped after $tokens tokens (${fmt(rate, 1)} tokens/s, ${fmt(seconds(t0), 1)} s in all)"
            } catch (x: Throwable) {
                Log.e(TAG, "generate", x)
                "error: ${x.message ?: x}"
            }
            ui.post { stats.text = summary; setBusy(Busy.IDLE) }
        }
    }

    // ---- plumbing ----

    override fun onActivityResult(requestCode: Int, resultCode: Int, data: Intent?) {
        if (resultCode != RESULT_OK) return
        val uri = data?.data
        when (requestCode) {
            TAKE_PHOTO -> loadImage(null)
            PICK_PHOTO -> if (uri != null) loadImage(uri)
            PICK_AUDIO -> if (uri != null) loadWav(uri)
            IMPORT_BUNDLE -> if (uri != null) importBundle(uri)
        }
    }

    private fun launch(intent: Intent, requestCode: Int) {
        try {
            startActivityForResult(intent, requestCode)
        } catch (e: ActivityNotFoundException) {
            toast("No app on this device can do that")
        }
    }

    private fun setBusy(state: Busy) {
        busy = state
        if (state == Busy.GENERATING) window.addFlags(WindowManager.LayoutParams.FLAG_KEEP_SCREEN_ON)
        else window.clearFlags(WindowManager.LayoutParams.FLAG_KEEP_SCREEN_ON)
        refreshButtons()
    }

    private fun refreshButtons() {
        val idle = busy == Busy.IDLE
        loadButton.isEnabled = idle
        importButton.isEnabled = idle
        generateButton.isEnabled = idle || busy == Busy.GENERATING
        generateButton.setText(if (busy == Busy.GENERATING) R.string.stop else R.string.generate)
    }

    private fun displayName(uri: Uri): String =
        contentResolver.query(uri, arrayOf(OpenableColumns.DISPLAY_NAME), null, null, null)?.use {
            if (it.moveToFirst() && !it.isNull(0)) it.getString(0) else null
        } ?: uri.lastPathSegment ?: "file"

    private fun copyTo(uri: Uri, file: File) {
        val input = contentResolver.openInputStream(uri) ?: throw IOException("cannot open $uri")
        input.use { src -> file.outputStream().use { src.copyTo(it) } }
    }

    private fun readBytes(uri: Uri, limit: Int): ByteArray {
        val input = contentResolver.openInputStream(uri) ?: throw IOException("cannot open $uri")
        return input.use { src ->
            val out = java.io.ByteArrayOutputStream()
            val buf = ByteArray(1 shl 16)
            while (true) {
                val n = src.read(buf)
                if (n < 0) break
                out.write(buf, 0, n)
                if (out.size() > limit) throw IOException("larger than ${limit shr 20} MB")
            }
            out.toByteArray()
        }
    }

    /** findViewById is generic from API 26 and not before: this reads the same against either android.jar. */
    @Suppress("UNCHECKED_CAST")
    private fun <T : View> view(id: Int): T = findViewById(id) as T

    private fun toast(text: String) = Toast.makeText(this, text, Toast.LENGTH_SHORT).show()
}

private fun seconds(since: Long) = (System.nanoTime() - since) / 1e9
private fun fmt(x: Double, decimals: Int) = String.format(Locale.US, "%.${decimals}f", x)
private fun mb(bytes: Long) = bytes shr 20
