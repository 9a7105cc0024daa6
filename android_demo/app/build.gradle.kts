// One module: the app (src/main) plus the engine's Kotlin sources (../engine/src/main/kotlin),
// compiled together, as `make android-apk` does. Versions pinned to what that build uses:
// onnxruntime 1.29.0, Gson 2.15.0, Kotlin 2.4.21. Untested here (no Android Gradle plugin to be had).
import org.jetbrains.kotlin.gradle.dsl.JvmTarget

plugins {
    id("com.android.application") version "8.13.0"
    id("org.jetbrains.kotlin.android") version "2.4.21"
}

android {
    namespace = "phi4edge.demo"
    compileSdk = 35

    defaultConfig {
        applicationId = "phi4edge.demo"
        minSdk = 24          // onnxruntime-android's own minimum
        targetSdk = 34
        versionCode = 1
        versionName = "0.1.0"
        // phones, and the emulator's x86_64; onnxruntime-android also has armeabi-v7a and x86
        ndk { abiFilters += listOf("arm64-v8a", "x86_64") }
    }

    sourceSets["main"].java.srcDirs("src/main/kotlin", "../engine/src/main/kotlin")

    buildTypes {
        release {
            // Gson reads the engine's classes by reflection: shrinking would need keep rules
            isMinifyEnabled = false
            signingConfig = signingConfigs.getByName("debug")
        }
    }

    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }

    // Compressed .so files, extracted at install, as in the APK `make android-apk` builds
    packaging { jniLibs { useLegacyPackaging = true } }
}

kotlin {
    compilerOptions { jvmTarget.set(JvmTarget.JVM_17) }
}

dependencies {
    implementation("com.microsoft.onnxruntime:onnxruntime-android:1.29.0")
    implementation("com.google.code.gson:gson:2.15.0")
}
