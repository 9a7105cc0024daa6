package phi4edge.demo

import android.media.AudioFormat
import android.media.AudioRecord
import android.media.MediaRecorder

/**
 * Records the microphone as the engine wants audio: 16 kHz, mono, PCM16 (which every Android device
 * must support for AudioRecord), on a thread of its own. [stop] returns the samples as floats.
 * Needs RECORD_AUDIO granted before [start].
 */
class Recorder(private val maxSeconds: Int = 60, private val onTick: (seconds: Double) -> Unit) {
    companion object {
        const val SAMPLE_RATE = 16000
    }

    private var thread: Thread? = null
    @Volatile private var running = false
    private var samples = ShortArray(0)
    private var count = 0

    val isRecording: Boolean get() = running

    /** Throws IllegalStateException when the microphone cannot be opened. */
    fun start() {
        check(!running) { "already recording" }
        val minBuffer = AudioRecord.getMinBufferSize(SAMPLE_RATE, AudioFormat.CHANNEL_IN_MONO, AudioFormat.ENCODING_PCM_16BIT)
        check(minBuffer > 0) { "this device cannot record 16 kHz mono PCM16" }
        val record = AudioRecord(
            MediaRecorder.AudioSource.MIC, SAMPLE_RATE, AudioFormat.CHANNEL_IN_MONO,
            AudioFormat.ENCODING_PCM_16BIT, maxOf(minBuffer, SAMPLE_RATE / 5 * 2),
        )
        if (record.state != AudioRecord.STATE_INITIALIZED) {
            record.release()
            throw IllegalStateException("the microphone could not be opened")
        }
        samples = ShortArray(SAMPLE_RATE * maxSeconds)
        count = 0
        running = true
        record.startRecording()
        thread = Thread({
            try {
                val chunk = SAMPLE_RATE / 10
                var lastTick = 0
                while (running && count < samples.size) {
                    val n = record.read(samples, count, minOf(chunk, samples.size - count))
                    if (n < 0) break
                    count += n
                    if (count - lastTick >= SAMPLE_RATE / 10) {
                        lastTick = count
                        onTick(count.toDouble() / SAMPLE_RATE)
                    }
                }
            } finally {
                running = false
                record.stop()
                record.release()
                onTick(count.toDouble() / SAMPLE_RATE)
            }
        }, "phi4edge-recorder").apply { start() }
    }

    /** Stops (or collects a recording that reached [maxSeconds]) and returns it as floats. */
    fun stop(): FloatArray {
        running = false
        thread?.join()
        thread = null
        return pcm16ToFloat(samples, count).also { samples = ShortArray(0) }
    }
}
